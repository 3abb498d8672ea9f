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


def seconds_per_training_example(model, tokenizer, texts, labels, batch_size: int, steps: int) -> float:
    """Wall-clock seconds per example of ``steps`` training steps of ``batch_size`` reviews (``model`` trains).

    The book's loop (:func:`behind_pipeline.training.train_classifier`) with ``max_steps``: the same batches for
    any two models given the same texts, batch size and steps, so the time per example compares the models only.
    """
    import time

    from behind_pipeline.training import TrainingSettings, train_classifier

    settings = TrainingSettings(batch_size=batch_size, max_steps=steps)
    texts, labels = list(texts)[: batch_size * steps], list(labels)[: batch_size * steps]
    start = time.perf_counter()
    train_classifier(model, tokenizer, texts, labels, settings)
    return (time.perf_counter() - start) / (batch_size * steps)


def qlora_classifier(lora_config, model_id: str | None = None, seed: int = 0):
    """QLoRA as the guides write it: chapter 16's NF4 4-bit encoder, ``prepare_model_for_kbit_training``, LoRA.

    The new head is left out of the quantization (``llm_int8_skip_modules``): it is trained in full, as
    ``modules_to_save``, and a 4-bit weight cannot be. As in :func:`behind_pipeline.bnb.load_bnb_classifier`, the
    CPU's bfloat16 repacking is turned off, so every CPU computes the same fp32 result.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    from behind_pipeline.bnb import bnb_config
    from behind_pipeline.trainer_setup import fresh_classifier

    quantization = bnb_config(4)
    quantization.llm_int8_skip_modules = ["classifier"]
    classifier = fresh_classifier(model_id, seed=seed, quantization_config=quantization)
    for module in classifier.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    # the guides' call: it also turns on gradient checkpointing; non-reentrant, the variant PyTorch asks for
    classifier = prepare_model_for_kbit_training(
        classifier, gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(classifier, lora_config)
