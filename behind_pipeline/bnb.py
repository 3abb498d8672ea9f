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


def bnb_config(bits: int, skip_modules: list[str] | None = None):
    """The ``BitsAndBytesConfig`` for ``bits`` = 8 (LLM.int8) or 4 (NF4, double quantization, fp32 compute).

    ``skip_modules`` (``llm_int8_skip_modules``, used by 8-bit and 4-bit alike): names of modules to leave
    unquantized, e.g. ``["classifier"]``. Without it transformers means to keep the model's last module, but its rule
    (``get_keys_to_not_convert``) takes the last *parameter* name and strips only ``.weight``: for a classifier
    whose last parameter is ``classifier.bias`` nothing matches, and the head is quantized too.
    """
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    if bits == 4:
        # fp32 compute: on a CPU there is no fast fp16/bf16 matmul to gain from, and fp32 keeps the comparison with
        # chapter 15 about the weights alone. On a GPU the guides use torch.bfloat16 here.
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=skip_modules)
    raise ValueError(f"bits must be one of {BITS}, got {bits!r}")


def load_bnb_classifier(model_id: str, bits: int, cpu_bf16_kernel: bool = False,
                        skip_modules: list[str] | None = None):
    """``AutoModelForSequenceClassification`` loaded through bitsandbytes with ``bits`` = 8 or 4, in eval mode.

    On CPUs with AVX512-BF16, a 4-bit layer's first forward pass in eval mode would repack its weight into a CPU
    layout (absmax in bfloat16, double quantization undone) and multiply in bfloat16, whatever
    ``bnb_4bit_compute_dtype`` says; other CPUs dequantize to the compute dtype. ``cpu_bf16_kernel=False`` (the
    default) keeps the second path everywhere, so results are the same on every CPU and the packed weights stay
    as they were loaded. ``skip_modules``: see :func:`bnb_config`.
    """
    from transformers import AutoModelForSequenceClassification

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        model_id, quantization_config=bnb_config(bits, skip_modules))
    if not cpu_bf16_kernel:
        for module in classifier.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return classifier.eval()


def int8_matmul_kernel() -> str:
    """Which kernel bitsandbytes registered for its CPU int8 product (``bitsandbytes::int8_linear_matmul``).

    bitsandbytes' CPU backend registers ``torch._int_mm`` only where PyTorch reports the CPU capability
    ``AVX512`` (``backends/cpu/ops.py``: without AVX-512 that kernel falls back to slow scalar code); elsewhere the
    default kernel runs, which multiplies the int8 values as fp32 (``torch.matmul(A.float(), B.float().t())``).
    """
    import bitsandbytes.backends.cpu.ops as cpu_ops

    return "torch._int_mm" if cpu_ops._has_avx512 else "fp32 matmul of the int8 values"


def int8_matmul_calls(run) -> dict[str, int]:
    """How many int8 products ``run()`` sent through ``torch._int_mm`` and through the fp32 fallback kernel.

    Counted by wrapping the two functions bitsandbytes' CPU and default kernels call, for the time of ``run()``.
    """
    import bitsandbytes.backends.default.ops as default_ops

    counts = {"torch._int_mm": 0, "fp32 fallback": 0}

    def counted(function, key):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return function(*args, **kwargs)
        return wrapper

    int_mm, fallback = torch._int_mm, default_ops._int8_linear_matmul_impl
    torch._int_mm = counted(int_mm, "torch._int_mm")
    default_ops._int8_linear_matmul_impl = counted(fallback, "fp32 fallback")
    try:
        run()
    finally:
        torch._int_mm, default_ops._int8_linear_matmul_impl = int_mm, fallback
    return counts


def outlier_columns(model) -> dict[str, int]:
    """Per 8-bit layer, how many input columns its last call kept out of the int8 product (``|x| >= threshold``)."""
    import bitsandbytes as bnb

    return {name: (0 if module.state.idx is None else module.state.idx.numel())
            for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear8bitLt)}


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


# --- memory and speed of one variant, each in a fresh process ---------------------------------------------------------

FRESH_VARIANTS = ("fp32", "dynamic int8", "bnb 8-bit", "bnb 4-bit NF4")


def _load_named(name: str, model_id: str):
    from transformers import AutoModelForSequenceClassification

    if name in ("bnb 8-bit", "bnb 4-bit NF4"):
        return load_bnb_classifier(model_id, 8 if name == "bnb 8-bit" else 4)
    classifier = AutoModelForSequenceClassification.from_pretrained(model_id).eval()
    if name == "fp32":
        return classifier
    if name == "dynamic int8":
        from behind_pipeline.quantize import dynamic_int8

        return dynamic_int8(classifier)  # the fp32 copy it was made from is freed when this returns
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(FRESH_VARIANTS)}")


def _measure_named(name: str, texts: list[str], batch_sizes: list[int], repeats: int) -> dict:
    import gc

    import bitsandbytes  # noqa: F401  (imported before the baseline in every variant: the same libraries for all)
    from transformers import AutoTokenizer

    from behind_pipeline.measure import latency_samples, peak_rss_mib, reset_peak_rss, rss_mib
    from behind_pipeline.models import classifier_id
    from behind_pipeline.runtime import NUM_THREADS

    torch.set_num_threads(NUM_THREADS)
    tokenizer = AutoTokenizer.from_pretrained(classifier_id())
    encodings = {size: tokenizer(texts[:size], padding=True, return_tensors="pt") for size in batch_sizes}
    gc.collect()
    baseline = rss_mib()
    reset_peak_rss()
    model = _load_named(name, classifier_id())
    gc.collect()
    after_load, load_peak = rss_mib(), peak_rss_mib()
    latency = {}
    with torch.inference_mode():
        for size, encoding in encodings.items():
            samples = latency_samples(lambda e=encoding: model(**e), warmup=1, repeats=repeats)
            latency[str(size)] = sorted(samples)[len(samples) // 2]  # the median (odd repeats)
    footprint = model.get_memory_footprint() if hasattr(model, "get_memory_footprint") else float("nan")
    return {"variant": name, "footprint_mib": footprint / 2**20, "after_load_mib": after_load - baseline,
            "load_peak_mib": load_peak - baseline, "peak_mib": peak_rss_mib() - baseline, "median_s": latency}


def measure_in_fresh_process(name: str, texts: list[str], batch_sizes=(1, 8, 32), repeats: int = 5) -> dict:
    """Load variant ``name`` (one of ``FRESH_VARIANTS``) in a new Python process and measure it there.

    Memory is the process's resident set above its level just before loading (libraries imported): after loading,
    its peak while loading, and its peak over loading and the timed forward passes (``measure.reset_peak_rss``); a
    fresh process keeps the figures of one variant apart from what an earlier one allocated. ``median_s``: median
    seconds of one forward pass on the first 1, 8 and 32 of ``texts``. ``footprint_mib``: ``get_memory_footprint()``
    (dynamic int8 has none that means anything: chapter 15). What the tests cannot compare: timings and memory.
    """
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        request = Path(folder) / "request.json"
        request.write_text(json.dumps({"name": name, "texts": list(texts)[: max(batch_sizes)],
                                       "batch_sizes": list(batch_sizes), "repeats": repeats}))
        result = subprocess.run([sys.executable, "-m", "behind_pipeline.bnb", str(request)],
                                capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    import json
    import sys
    import warnings
    from pathlib import Path

    from behind_pipeline.paths import configure_environment

    configure_environment()
    warnings.filterwarnings("ignore")
    request = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(_measure_named(request["name"], request["texts"], request["batch_sizes"], request["repeats"])))
