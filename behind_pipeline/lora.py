"""LoRA by hand (chapter 14): a frozen ``nn.Linear`` plus a trainable low-rank update, and what it costs on disk.

LoRA (Hu et al., 2021) keeps a pretrained weight ``W`` (out, in) frozen and learns ``delta W = (alpha / r) B A``
with ``A`` (r, in) and ``B`` (out, r), ``r`` much smaller than ``in`` and ``out``:

    y = x W^T + b + (alpha / r) * (x A^T) B^T

``B`` starts at zero, so at step 0 the wrapped model computes exactly what the base model computes; ``A`` starts
random (as in ``peft``: Kaiming-uniform), so the gradient of ``B`` is not zero and learning can start. Chapter 14
puts it on the attention projections ``query`` and ``value`` of every layer and compares it with ``peft``.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

# Where peft's SEQ_CLS task keeps the new head trainable (``modules_to_save``); BERT's head is ``classifier``.
HEAD_NAMES = ("classifier", "score")


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * x A^T B^T``: the base layer frozen, only ``lora_A`` and ``lora_B`` learn."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)  # W and b stay the pretrained ones
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r  # not alpha: a larger r would otherwise mean a larger update at the same alpha
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))  # (out, r): zero, so delta W = 0 at start
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's initialisation of A

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, seq, in)
        update = (x @ self.lora_A.T) @ self.lora_B.T  # (batch, seq, r) -> (batch, seq, out): never builds B A
        return self.base(x) + self.scaling * update

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}"


def add_lora(classifier: nn.Module, r: int, alpha: float, targets: Sequence[str] = ("query", "value"),
             train_head: bool = True) -> list[str]:
    """Freeze ``classifier`` and wrap every ``nn.Linear`` whose name ends in one of ``targets``, in place.

    The classification head (``classifier``) stays trainable when ``train_head``: it is new, so it must learn, as
    ``peft``'s ``task_type="SEQ_CLS"`` does. Returns the names of the wrapped layers.
    """
    classifier.requires_grad_(False)
    wrapped = []
    for name, module in list(classifier.named_modules()):
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
            parent_name, _, child = name.rpartition(".")
            setattr(classifier.get_submodule(parent_name), child, LoRALinear(module, r, alpha))
            wrapped.append(name)
    if train_head:
        for head in HEAD_NAMES:
            if hasattr(classifier, head):
                getattr(classifier, head).requires_grad_(True)
    return wrapped


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a parameter shared by two modules is counted once."""
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in model.parameters())
    return trainable, total


def folder_size_mib(folder: str | Path, pattern: str = "*.safetensors") -> float:
    """Size in MiB of the files matching ``pattern`` in ``folder`` (the weights a reader would ship)."""
    return sum(path.stat().st_size for path in Path(folder).glob(pattern)) / 2**20


def copy_from_peft(hand_classifier: nn.Module, peft_classifier) -> int:
    """Copy a ``peft`` model's LoRA factors and head into a model wrapped by :func:`add_lora`; returns tensors copied.

    peft keeps each factor as an ``nn.Linear`` inside a dict keyed by adapter name (``lora_A["default"]``), and the
    trained head as a copy in ``modules_to_save["default"]``; the hand version keeps plain parameters.
    """
    inner = peft_classifier.base_model.model  # the transformers model with peft's layers inside
    copied = 0
    with torch.no_grad():
        for name, module in hand_classifier.named_modules():
            if isinstance(module, LoRALinear):
                theirs = inner.get_submodule(name)
                module.lora_A.copy_(theirs.lora_A["default"].weight)
                module.lora_B.copy_(theirs.lora_B["default"].weight)
                copied += 2
        for head in HEAD_NAMES:
            if hasattr(hand_classifier, head):
                trained = getattr(inner, head).modules_to_save["default"]
                getattr(hand_classifier, head).load_state_dict(trained.state_dict())
                copied += len(trained.state_dict())
    return copied
