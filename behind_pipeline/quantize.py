"""Quantization by hand (chapter 15): int8 scales and zero points, an int8 linear layer, NF4, and dynamic int8.

A float $x$ is stored as an integer $q$ with a scale $s$ (and, asymmetric, a zero point $z$):
$q = \\mathrm{clamp}(\\mathrm{round}(x / s + z))$, read back as $\\hat x = s\\,(q - z)$.

- symmetric int8 (weights): $s = \\max|x| / 127$, $z = 0$, one scale per tensor or one per output row;
- asymmetric (activations): the range $[\\min(x, 0), \\max(x, 0)]$ mapped onto $[q_{min}, q_{max}]$ with an integer
  zero point, so that 0.0 is stored exactly (padding and ReLU zeros stay zeros);
- NF4 (4 bits, bitsandbytes' ``nf4``): each block of 64 weights divided by its absmax, each value replaced by the
  nearest of 16 fixed levels in $[-1, 1]$ (quantiles of a normal distribution).

``dynamic_int8`` is what ``make bench`` and the service (``BTP_SERVICE_INT8=1``) use: PyTorch's dynamic
quantization of every ``nn.Linear``: weights stored as int8 with one scale per tensor (symmetric, $z = 0$; one per
output row with ``per_channel=True``), activations quantized on the fly, batch by batch, to 7-bit unsigned
integers; embeddings and LayerNorms stay fp32. :func:`int8_linear_by_hand` computes what one of its layers computes.
``static_int8_linears`` is static quantization of the same layers: observers record the ranges of each Linear's
input and output on calibration texts, and those fixed scales replace the per-batch ones.

Both use ``torch.ao.quantization``, deprecated in favour of torchao: its warning says it will be removed in
2.10, and the pinned PyTorch 2.13 still has it (see ``TORCH_AO_NOTE``).
"""

import copy
import io
import warnings
from collections.abc import Sequence

import torch

INT8_MAX = 127  # symmetric int8 uses [-127, 127], so that -x is stored as exactly -q
# PyTorch's dynamic int8 Linear quantizes activations to [0, 127], not [0, 255] (``reduce_range=True``): the x86
# kernels add products of uint8 and int8 in pairs into int16, and 255 * 127 * 2 would overflow it.
ACTIVATION_QMAX = 127
NF4_BLOCKSIZE = 64  # bitsandbytes' default block size for 4-bit weights


# --- int8: scale and zero point --------------------------------------------------------------------------------------


def symmetric_scale(weight: torch.Tensor, per_channel: bool = False, qmax: int = INT8_MAX) -> torch.Tensor:
    """$\\max|w| / q_{max}$: one scale for the tensor, or (``per_channel``) one per output row, shape (out, 1).

    A Linear weight is (out, in): output row $i$ is the dot product of the input with row $i$, so one scale per
    row can be taken out of that sum (see :func:`int8_linear_by_hand`).
    """
    absmax = weight.abs().amax(dim=1, keepdim=True) if per_channel else weight.abs().max()
    return absmax.float() / qmax


def quantize_symmetric(weight: torch.Tensor, scale: torch.Tensor, qmax: int = INT8_MAX) -> torch.Tensor:
    """int8 values ``round(w / scale)``, clamped to [-qmax, qmax]; ``scale`` is a number or one per row."""
    return torch.clamp(torch.round(weight / scale), -qmax, qmax).to(torch.int8)


def asymmetric_params(x: torch.Tensor, qmin: int = 0, qmax: int = 255) -> tuple[torch.Tensor, int]:
    """(scale, zero point) that map $[\\min(x, 0), \\max(x, 0)]$ onto the integers $[q_{min}, q_{max}]$.

    The zero point is an integer: the integer that stands for 0.0, which is therefore stored without error.
    ``asymmetric_params(torch.tensor([-1.0, 3.0]))`` -> scale 4 / 255, zero point 64.
    """
    low, high = torch.clamp(x.min(), max=0.0).float(), torch.clamp(x.max(), min=0.0).float()
    scale = (high - low) / (qmax - qmin)
    if scale == 0:  # an all-zero tensor: any scale stores it exactly
        scale = torch.tensor(1.0)
    zero_point = int(torch.clamp(torch.round(qmin - low / scale), qmin, qmax))
    return scale, zero_point


def quantize_asymmetric(x: torch.Tensor, scale: torch.Tensor, zero_point: int, qmin: int = 0,
                        qmax: int = 255) -> torch.Tensor:
    """Integers ``round(x / scale + zero_point)`` clamped to [qmin, qmax] (int32, whatever the range).

    The zero point is added *before* rounding, in float32, as PyTorch's kernels do: for an integer zero point it is
    the same number, except where ``x / scale`` lands within float rounding of a half step.
    """
    return torch.clamp(torch.round(x / scale + zero_point), qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale, zero_point: int = 0) -> torch.Tensor:
    """Back to floats: ``scale * (q - zero_point)``."""
    return (q.to(torch.int32) - zero_point).float() * scale


# --- an int8 linear layer ---------------------------------------------------------------------------------------------


def torch_int8_weights(quantized_linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(int8 weight (out, in), its one fp32 scale, fp32 bias) stored in a dynamic quantized ``Linear``."""
    weight = quantized_linear.weight()  # a quantized tensor: int8 values and a scale
    return weight.int_repr(), torch.tensor(weight.q_scale(), dtype=torch.float32), quantized_linear.bias()


def int8_linear_by_hand(x: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor,
                        bias: torch.Tensor | None, activation_qmax: int = ACTIVATION_QMAX) -> torch.Tensor:
    """What a dynamic int8 Linear computes: quantize ``x``, multiply integers with an int32 sum, rescale once.

    $y = s_x s_w \\sum_k (q_{x,k} - z_x)\\, q_{w,k} + b$: the scales leave the sum because they are the same for
    every term, so the whole dot product runs on integers. ``x``: (..., in), ``weight_int8``: (out, in).
    """
    x_scale, x_zero_point = asymmetric_params(x, 0, activation_qmax)  # one scale for the whole batch: "dynamic"
    x_int = quantize_asymmetric(x, x_scale, x_zero_point, 0, activation_qmax)  # (..., in) in [0, 127]
    accumulated = (x_int - x_zero_point) @ weight_int8.to(torch.int32).T  # (..., out) int32
    y = accumulated.float() * (x_scale * weight_scale)  # (..., out) fp32
    return y if bias is None else y + bias


# --- 4 bits: NF4 -----------------------------------------------------------------------------------------------------


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels, shape (16,), from -1 to 1, as bitsandbytes defines them (``get_4bit_type("nf4")``).

    QLoRA (Dettmers et al., 2023) builds them from quantiles of a standard normal distribution, normalised to
    [-1, 1]: 7 negative levels, 0, and 8 positive ones, so that 0 is exact and equal shares of normally distributed
    weights fall on each level.
    """
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.get_4bit_type("nf4", device="cpu").float()


def quantize_nf4(weight: torch.Tensor, levels: torch.Tensor,
                 blocksize: int = NF4_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of the nearest level, one per weight, in row-major order; absmax of each block of ``blocksize``)."""
    blocks = weight.float().reshape(-1, blocksize)  # (blocks, blocksize): consecutive weights of a row
    absmax = blocks.abs().amax(dim=1)  # (blocks,)
    normalized = blocks / absmax.where(absmax > 0, 1.0)[:, None]  # each block in [-1, 1]
    indices = (normalized[..., None] - levels).abs().argmin(dim=-1)  # (blocks, blocksize)
    return indices.reshape(-1), absmax


def dequantize_nf4(indices: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor, shape,
                   blocksize: int = NF4_BLOCKSIZE) -> torch.Tensor:
    """The weight back from NF4: each index's level times its block's absmax, in ``shape``."""
    return (levels[indices].reshape(-1, blocksize) * absmax[:, None]).reshape(shape)


# --- the whole classifier --------------------------------------------------------------------------------------------


# Why the book keeps torch.ao.quantization although it is deprecated: its replacement, torchao, is not in the pinned
# stack, and the book's int8 model (chapter 15, make bench, the service) must stay the one whose outputs are stored.
TORCH_AO_NOTE = "torch.ao.quantization is deprecated"


def torch_ao_warning() -> str:
    """The first line of the deprecation warning ``torch.ao.quantization`` raises, as this PyTorch words it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 4)), {torch.nn.Linear},
                                               dtype=torch.qint8)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    return next((m.strip().splitlines()[0].strip() for m in messages if TORCH_AO_NOTE in m), "")


def dynamic_int8(classifier: torch.nn.Module, per_channel: bool = False) -> torch.nn.Module:
    """A copy of ``classifier`` whose Linear layers run in int8 (``torch.ao.quantization.quantize_dynamic``).

    ``per_channel=False`` (what the bench and the service use): one weight scale per Linear, PyTorch's default
    qconfig. ``per_channel=True``: ``per_channel_dynamic_qconfig``, one scale per output row of each weight.
    """
    spec = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig} if per_channel else {torch.nn.Linear}
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which the pinned stack does not include.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(classifier).eval(), spec, dtype=torch.qint8)


def static_int8_linears(classifier: torch.nn.Module, tokenizer, calibration_texts: Sequence[str],
                        batch_size: int = 32) -> torch.nn.Module:
    """A copy of ``classifier`` whose ``nn.Linear`` layers are *statically* quantized (eager mode, ``torch.ao``).

    Each Linear is wrapped between a ``QuantStub`` and a ``DeQuantStub`` (``QuantWrapper``), so exactly these
    tensors become int8: the Linear's input (one scale and zero point, fixed by calibration), its weight (one scale
    per output row) and its output (fixed scale, turned back into fp32 by the ``DeQuantStub``). Everything between
    two Linears (embeddings, LayerNorm, GELU, attention scores and softmax, residual sums) stays fp32.

    1. ``prepare`` attaches observers (the ``x86`` qconfig: a ``HistogramObserver`` for activations, a per-channel
       min/max observer for weights);
    2. calibration runs ``calibration_texts`` through the model, and the observers record the ranges they see;
    3. ``convert`` replaces each observed Linear by ``quantized.Linear`` with those scales baked in.
    """
    from torch.ao.quantization import QuantWrapper, convert, get_default_qconfig, prepare

    from behind_pipeline.predict import predict_logits

    model = copy.deepcopy(classifier).eval()
    qconfig = get_default_qconfig("x86")
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice (see TORCH_AO_NOTE)
        for name in names:
            wrapper = QuantWrapper(model.get_submodule(name))
            wrapper.qconfig = qconfig  # only the wrappers are observed; the rest of the model stays fp32
            model.set_submodule(name, wrapper)
        prepare(model, inplace=True)
        predict_logits(model, tokenizer, calibration_texts, batch_size=batch_size)  # the observers record ranges
        convert(model, inplace=True)
    return model.eval()


def saved_size_mib(model: torch.nn.Module) -> float:
    """MiB of ``torch.save(model.state_dict())``: the bytes one would write to disk to ship the model."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 2**20


def module_type_counts(model: torch.nn.Module) -> dict[str, int]:
    """How many modules of each kind hold weights: ``Linear``, ``Embedding``, ``LayerNorm``, ``Linear (int8)``
    (dynamic), ``Linear (static int8)``."""
    import torch.ao.nn.quantized as quantized_nn

    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, quantized_nn.dynamic.Linear):
            name = "Linear (int8)"
        elif isinstance(module, quantized_nn.Linear):
            name = "Linear (static int8)"
        elif any(True for _ in module.parameters(recurse=False)):
            name = type(module).__name__
        else:
            continue
        counts[name] = counts.get(name, 0) + 1
    return counts
