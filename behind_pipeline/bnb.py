"""bitsandbytes as the guides write it (chapter 16): 8-bit and 4-bit NF4 loading, and a 4-bit layer read by hand.

``load_bnb_classifier(model_id, bits)`` is what chapter 16 and ``make bench`` load: ``BitsAndBytesConfig`` with
``load_in_8bit`` (LLM.int8: int8 weights, one absmax per output row) or ``load_in_4bit`` with the NF4 type, double
quantization and fp32 compute. bitsandbytes 0.50.2 runs both on the CPU.

A 4-bit ``Linear4bit`` stores its weight as bytes that each hold two 4-bit indices into the 16 NF4 levels (high
nibble first), one absmax per block of 64 weights (row-major order), and, with double quantization, those absmax
values themselves quantized to 8 bits in blocks of 256 plus one offset. :func:`dequantize_nf4_by_hand` undoes the
three steps with plain tensor indexing; it equals ``bitsandbytes.functional.dequantize_4bit`` exactly.
"""

import logging

import torch

BITS = (8, 4)
# bitsandbytes' 8-bit matmul logs "MatMul8bitLt: inputs will be cast from torch.float32 to float16" at every layer
# call on fp32 inputs: it is how LLM.int8 works (the activations are quantized from fp16), not a problem to report.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def bnb_config(bits: int):
    """The ``BitsAndBytesConfig`` for ``bits`` = 8 (LLM.int8) or 4 (NF4, double quantization, fp32 compute)."""
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits == 4:
        # fp32 compute: on a CPU there is no fast fp16/bf16 matmul to gain from, and fp32 keeps the comparison with
        # chapter 15 about the weights alone. On a GPU the guides use torch.bfloat16 here.
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32)
    raise ValueError(f"bits must be one of {BITS}, got {bits!r}")


def load_bnb_classifier(model_id: str, bits: int, cpu_bf16_kernel: bool = False):
    """``AutoModelForSequenceClassification`` loaded through bitsandbytes with ``bits`` = 8 or 4, in eval mode.

    On CPUs with AVX512-BF16, a 4-bit layer's first forward pass in eval mode would repack its weight into a CPU
    layout (absmax in bfloat16, double quantization undone) and multiply in bfloat16, whatever
    ``bnb_4bit_compute_dtype`` says; other CPUs dequantize to the compute dtype. ``cpu_bf16_kernel=False`` (the
    default) keeps the second path everywhere, so results are the same on every CPU and the packed weights stay
    as they were loaded.
    """
    from transformers import AutoModelForSequenceClassification

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    classifier = AutoModelForSequenceClassification.from_pretrained(model_id, quantization_config=bnb_config(bits))
    if not cpu_bf16_kernel:
        for module in classifier.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return classifier.eval()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit indices in a packed uint8 tensor, in order: each byte holds two, the high nibble first.

    ``unpack_nibbles(torch.tensor([0x7F], dtype=torch.uint8)) -> tensor([7, 15])``
    """
    packed = packed.reshape(-1).to(torch.uint8)
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1).long()  # (2 * bytes,)


def absmax_by_hand(quant_state) -> torch.Tensor:
    """The fp32 absmax of each block of a 4-bit weight, undoing double quantization when it was used.

    With double quantization bitsandbytes stores each absmax as an 8-bit index into ``state2.code`` (a dynamic
    8-bit map), scaled by one fp32 absmax per block of ``state2.blocksize`` (256) absmax values, after
    subtracting their mean (``offset``), which is added back here.
    """
    if not quant_state.nested:
        return quant_state.absmax.float()
    state2 = quant_state.state2
    codes = state2.code[quant_state.absmax.long()]  # (blocks,) values in [-1, 1]
    scales = state2.absmax.repeat_interleave(state2.blocksize)[: codes.numel()]  # one per block of 256 absmax
    return codes * scales + quant_state.offset


def dequantize_nf4_by_hand(weight) -> torch.Tensor:
    """The fp32 weight of a bitsandbytes 4-bit layer (``layer.weight``), from its packed bytes and quant state."""
    state = weight.quant_state
    indices = unpack_nibbles(weight.data)  # (out * in,)
    levels = state.code[indices].reshape(-1, state.blocksize)  # (blocks, blocksize), each in [-1, 1]
    return (levels * absmax_by_hand(state)[:, None]).reshape(state.shape)  # (out, in)


def dequantize_with_bnb(weight) -> torch.Tensor:
    """The same weight as bitsandbytes itself dequantizes it (what its 4-bit matmul multiplies with)."""
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(weight.data, weight.quant_state)


def linear_layer_types(model) -> dict[str, int]:
    """How many modules of each Linear type ``model`` holds: which layers bitsandbytes replaced."""
    counts: dict[str, int] = {}
    for module in model.modules():
        name = type(module).__name__
        if name.startswith("Linear"):
            counts[name] = counts.get(name, 0) + 1
    return counts
