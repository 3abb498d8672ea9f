"""The benchmark (``make bench``): every variant of the course classifier measured in one run on this machine.

    python -m behind_pipeline.bench                     # all variants, written to results/bench.json
    python -m behind_pipeline.bench --tiny --output out.json --variants fp32,onnx   # seconds, for the tests

Variants: fp32 (PyTorch), fp16 and bf16 (the same weights loaded with ``dtype=``, chapter 15), ``torch.compile``
of the fp32 model (its compile time recorded apart), dynamic int8 (``quantize.dynamic_int8``, chapter 15),
bitsandbytes 8-bit and 4-bit NF4 (``bnb.load_bnb_classifier``, chapter 16), ONNX Runtime fp32 and ONNX Runtime
dynamic int8 (chapter 17).

Each variant runs in a **fresh subprocess** (``--worker``), one after the other, so its memory figures are its own:
*peak memory* is the process's peak resident set (Linux ``VmHWM``, reset just before the model is loaded) minus
its resident set at that moment (the engine's library already imported), so it counts the model, any copy made
while building it (dynamic int8 is made from the fp32 model) and the activations of the runs. Every variant gets
the same 2 threads, the same test reviews and the same fixed batches. Per variant:

- accuracy and macro-F1 on the test split (``predict.predict_logits`` at batch 32, ``metrics``), and the
  throughput of that pass (reviews per second, tokenization included);
- latency of one forward pass on a fixed batch of the first 1, 8 and 32 test reviews: warm-up calls first, then
  ``repeats`` timed calls; median and p95;
- size on disk of what one would ship (safetensors, the saved state dict, the ONNX file);
- the largest logit difference and the label mismatches against fp32 on the whole test split.

Ratios against fp32 (speed-up, size, accuracy change) are computed from figures of the same run. The results go to
the section ``"models"`` of ``results/bench.json``; other sections (the service's, chapter 18) are kept as they are.
"""

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from behind_pipeline.measure import latency_samples, latency_summary, peak_rss_mib, reset_peak_rss, rss_mib
from behind_pipeline.paths import BENCH_FILE, configure_environment
from behind_pipeline.results import write_section
from behind_pipeline.runtime import NUM_THREADS, cpu_model, file_mib, folder_mib

SECTION = "models"
VARIANTS = {  # name -> label in tables
    "fp32": "PyTorch fp32",
    "fp16": "PyTorch fp16",
    "bf16": "PyTorch bf16",
    "compiled": "PyTorch fp32, torch.compile",
    "dynamic_int8": "PyTorch dynamic int8",
    "bnb_8bit": "bitsandbytes 8-bit",
    "bnb_4bit": "bitsandbytes 4-bit NF4",
    "onnx": "ONNX Runtime fp32",
    "onnx_int8": "ONNX Runtime dynamic int8",
}
SETTINGS = {
    # texts: None = the whole test split. Three warm-up calls let lazy initialisation (weight packing, thread
    # pools, ORT's memory arena) happen before the clock runs; 20 timed calls give a stable median and a p95.
    "full": {"texts": None, "batch_sizes": [1, 8, 32], "warmup": 3, "repeats": 20, "predict_batch_size": 32},
    "tiny": {"texts": 16, "batch_sizes": [1, 8], "warmup": 1, "repeats": 1, "predict_batch_size": 8},
}
SLOW_CALL_SECONDS, SLOW_REPEATS = 1.0, 5
# A figure exactly at a target's limit (1.7x, -1 point) meets it, whatever the float rounding of the ratio.
TOLERANCE = 1e-9
VERSIONED = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "bitsandbytes", "numpy")


# --- timing: the one way the benchmark and chapter 17 time a call --------------------------------------------------


# --- one variant, in a worker process ------------------------------------------------------------------------------


def load_variant(name: str, model_id: str, scratch: Path):
    """(model, a function giving its size on disk in MiB) for one variant; ``scratch`` is a folder for the files
    written to be measured. The size is taken after the timings: bitsandbytes 0.50.2 repacks a 4-bit layer for the
    CPU at its first forward pass, and a 4-bit model saved before that pass fails at its next forward."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if name in ("fp16", "bf16"):  # the guides' first lever: half the bytes per weight
        dtype = torch.float16 if name == "fp16" else torch.bfloat16
        classifier = AutoModelForSequenceClassification.from_pretrained(model_id, dtype=dtype).eval()

        def half_mib():
            classifier.save_pretrained(scratch / name)  # safetensors in the model's dtype
            return folder_mib(scratch / name, "*.safetensors")

        return classifier, half_mib
    if name == "compiled":  # the same fp32 weights; what ships is the same file
        classifier = AutoModelForSequenceClassification.from_pretrained(model_id).eval()
        return torch.compile(classifier), lambda: folder_mib_of_weights(model_id, classifier, scratch)
    if name in ("fp32", "dynamic_int8"):
        classifier = AutoModelForSequenceClassification.from_pretrained(model_id).eval()
        if name == "fp32":
            return classifier, lambda: folder_mib_of_weights(model_id, classifier, scratch)
        from behind_pipeline.quantize import dynamic_int8

        quantized = dynamic_int8(classifier)
        del classifier

        def saved_mib():
            torch.save(quantized.state_dict(), scratch / "int8.pt")  # int8 weights and scales, as one ships them
            return file_mib(scratch / "int8.pt")

        return quantized, saved_mib
    if name in ("bnb_8bit", "bnb_4bit"):
        from behind_pipeline.bnb import load_bnb_classifier

        classifier = load_bnb_classifier(model_id, 8 if name == "bnb_8bit" else 4)

        def saved_mib():
            classifier.save_pretrained(scratch / name)  # bitsandbytes serializes its packed weights and scales
            return folder_mib(scratch / name)

        return classifier, saved_mib
    if name in ("onnx", "onnx_int8"):
        from behind_pipeline.onnx_export import (
            OnnxClassifier,
            classifier_onnx_file,
            classifier_onnx_int8_file,
            ort_session,
        )

        path = classifier_onnx_file(model_id) if name == "onnx" else classifier_onnx_int8_file(model_id)
        num_labels = AutoConfig.from_pretrained(model_id).num_labels
        return OnnxClassifier(ort_session(path, NUM_THREADS), num_labels), lambda: file_mib(path)
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")


def folder_mib_of_weights(model_id: str, classifier, scratch: Path) -> float:
    """The safetensors file(s) of a local model folder, or the model saved to ``scratch`` when there are none."""
    files = list(Path(model_id).glob("*.safetensors")) if Path(model_id).is_dir() else []
    if not files:
        classifier.save_pretrained(scratch / "fp32")
        files = list((scratch / "fp32").glob("*.safetensors"))
    return sum(file_mib(path) for path in files)


def measure_variant(name: str, settings: dict, logits_file: Path) -> dict:
    """Every figure of one variant, measured in this process (call it in a fresh one); logits go to a .npy file."""
    import torch
    from transformers import AutoTokenizer

    from behind_pipeline.data import load_rotten_tomatoes
    from behind_pipeline.metrics import classification_scores
    from behind_pipeline.models import classifier_id
    from behind_pipeline.predict import predict_logits

    torch.set_num_threads(NUM_THREADS)
    torch.manual_seed(0)
    model_id = classifier_id()
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    test_ds = load_rotten_tomatoes()["test"]
    count = settings["texts"] or len(test_ds)
    texts, labels = list(test_ds["text"][:count]), list(test_ds["label"][:count])
    if name.startswith("bnb"):  # the engine's library is imported before the baseline: memory is the model's
        import bitsandbytes  # noqa: F401
    if name.startswith("onnx"):
        import onnxruntime  # noqa: F401
    gc.collect()
    baseline = rss_mib()
    reset_peak_rss()
    scratch = tempfile.TemporaryDirectory()
    model, size_mib = load_variant(name, model_id, Path(scratch.name))
    loaded = rss_mib()
    extra = {}
    if name == "compiled":
        # torch.compile compiles at the first call (and again for new input shapes, until it marks them dynamic):
        # the first call on one review and the first pass over the test split pay for it, the timings after not.
        first = tokenizer(texts[:1], return_tensors="pt")
        with torch.inference_mode():
            start = time.perf_counter()
            model(**first)
            extra["first_call_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            model(**first)
            extra["second_call_seconds"] = time.perf_counter() - start
        start = time.perf_counter()  # every batch shape of the test split, compiled (dynamic) once
        predict_logits(model, tokenizer, texts, batch_size=settings["predict_batch_size"])
        extra["first_pass_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    logits = predict_logits(model, tokenizer, texts, batch_size=settings["predict_batch_size"])  # (texts, labels)
    seconds = time.perf_counter() - start
    np.save(logits_file, logits.numpy())
    scores = classification_scores(labels, logits.argmax(dim=-1))

    latency = {}
    for batch_size in settings["batch_sizes"]:
        encoding = tokenizer(texts[:batch_size], padding=True, return_tensors="pt")  # the same batch for all

        def forward(encoding=encoding):
            with torch.inference_mode():
                return model(**encoding).logits

        # A variant that takes over a second per call (fp16 on a CPU without fp16 kernels) gets fewer timed calls,
        # so the benchmark still ends in minutes; the first warm-up call decides, and the count is recorded.
        start = time.perf_counter()
        forward()
        repeats = settings["repeats"] if time.perf_counter() - start < SLOW_CALL_SECONDS else SLOW_REPEATS
        samples = latency_samples(forward, max(settings["warmup"] - 1, 0), min(repeats, settings["repeats"]))
        latency[str(batch_size)] = {**latency_summary(samples), "repeats": len(samples)}
    peak = peak_rss_mib()  # before the size is measured: saving a copy is not part of serving the model
    with scratch:
        size = size_mib()
    return {
        "variant": name, "label": VARIANTS[name], "texts": len(texts), **scores,
        "throughput_per_s": len(texts) / seconds, "latency": latency, "size_mib": size,
        "memory_after_load_mib": max(loaded - baseline, 0.0), "peak_memory_mib": max(peak - baseline, 0.0),
        **extra,
    }


def worker(name: str, settings: dict, logits_file: Path) -> None:
    """Entry point of the subprocess: print one JSON line with the variant's figures."""
    warnings.filterwarnings("ignore")  # bitsandbytes 8-bit warns once per layer call that inputs are cast
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    print(json.dumps(measure_variant(name, settings, logits_file)))


# --- the whole run -------------------------------------------------------------------------------------------------


def run_variant(name: str, settings: dict, logits_file: Path) -> dict:
    command = [sys.executable, "-m", "behind_pipeline.bench", "--worker", name, "--settings", json.dumps(settings),
               "--logits", str(logits_file)]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_with_reference(rows: list[dict], logits: dict[str, np.ndarray], reference: str = "fp32") -> dict:
    """Ratios and differences of each variant against ``reference``, all from this run's figures."""
    if reference not in logits:
        return {}
    base = next(row for row in rows if row["variant"] == reference)
    base_labels = logits[reference].argmax(axis=-1)
    ratios = {}
    for row in rows:
        other = logits[row["variant"]]
        ratios[row["variant"]] = {
            "max_abs_logit_diff": float(np.abs(other - logits[reference]).max()),
            "label_mismatches": int((other.argmax(axis=-1) != base_labels).sum()),
            "accuracy_change_points": 100 * (row["accuracy"] - base["accuracy"]),
            "macro_f1_change_points": 100 * (row["macro_f1"] - base["macro_f1"]),
            "size_ratio": row["size_mib"] / base["size_mib"],
            "speedup": {size: base["latency"][size]["median_ms"] / timing["median_ms"]
                        for size, timing in row["latency"].items()},
            "throughput_ratio": row["throughput_per_s"] / base["throughput_per_s"],
        }
    return ratios


def targets(ratios: dict, rows: list[dict]) -> dict:
    """The issue's two targets, judged on this run's figures (absent when a variant was not measured)."""
    found = {}
    int8 = ratios.get("dynamic_int8", {})
    if "32" in int8.get("speedup", {}):
        speedup, change = int8["speedup"]["32"], int8["accuracy_change_points"]
        found["dynamic_int8"] = {
            "goal": "dynamic int8 at least 1.7x faster than fp32 at batch 32, at most 1 point accuracy loss",
            "speedup_batch_32": speedup, "accuracy_change_points": change,
            "met": bool(speedup >= 1.7 - TOLERANCE and change >= -1.0 - TOLERANCE)}
    onnx = ratios.get("onnx", {})
    if "1" in onnx.get("speedup", {}):
        found["onnx"] = {
            "goal": "ONNX Runtime at least as fast as PyTorch fp32 at batch 1, logits equal to < 1e-4",
            "speedup_batch_1": onnx["speedup"]["1"], "max_abs_logit_diff": onnx["max_abs_logit_diff"],
            "met": bool(onnx["speedup"]["1"] >= 1.0 - TOLERANCE and onnx["max_abs_logit_diff"] < 1e-4)}
    return found


def machine() -> dict:
    found = {"cpu": cpu_model(), "architecture": platform.machine(), "cores": os.cpu_count(), "threads": NUM_THREADS,
             "system": platform.system(), "python": platform.python_version()}
    try:  # whether the CPU multiplies bfloat16 natively: the fp16 and bf16 rows depend on it
        import torch

        found["avx512_bf16"] = bool(torch.cpu._is_avx512_bf16_supported())
        found["amx"] = bool(torch.cpu._is_amx_tile_supported())
    except (ImportError, AttributeError):
        pass
    return found


def versions() -> dict:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def run(variants: list[str], setting: str = "full", output: Path = BENCH_FILE) -> dict:
    """Measure ``variants`` one after the other, each in its own process, and write the section to ``output``."""
    settings = SETTINGS[setting]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if any(name.startswith("onnx") for name in variants):  # export once here, so no worker's memory counts it
        from behind_pipeline.onnx_export import classifier_onnx_file, classifier_onnx_int8_file

        classifier_onnx_file()
        if "onnx_int8" in variants:
            classifier_onnx_int8_file()
    started = datetime.now(UTC)
    rows, logits, failed = [], {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in variants:
            print(f"measuring {VARIANTS[name]} ...", flush=True)
            logits_file = Path(scratch) / f"{name}.npy"
            try:
                row = run_variant(name, settings, logits_file)
            except RuntimeError as error:  # one variant that cannot run here (no compiler for torch.compile, say)
                failed[name] = str(error).splitlines()[-1] if str(error).strip() else repr(error)
                print(f"  FAILED: {failed[name]}", flush=True)
                continue
            logits[name] = np.load(logits_file)
            rows.append(row)
            print(f"  accuracy {row['accuracy']:.4f} | "
                  + " | ".join(f"batch {size}: {t['median_ms']:.1f} ms" for size, t in row["latency"].items()),
                  flush=True)
    ratios = compare_with_reference(rows, logits)
    section = {
        "setting": setting, "settings": settings, "measured_at": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "threads": NUM_THREADS, "versions": versions(),
        "memory_note": ("peak memory: peak resident set (VmHWM, reset before the model is loaded) of a fresh "
                        "process per variant, minus its resident set at that moment (imports, the engine's library and "
                        "the data excluded); "
                        "after load: resident set once the model is ready, minus the same baseline"),
        "variants": rows, "vs_fp32": ratios, "targets": targets(ratios, rows), "failed": failed,
    }
    write_section(output, SECTION, section)
    return section


def main(argv: list[str] | None = None) -> int:
    configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="16 texts, batch 1 and 8, one repeat: seconds")
    parser.add_argument("--output", type=Path, default=BENCH_FILE)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--logits", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, json.loads(args.settings), args.logits)
        return 0
    section = run([name.strip() for name in args.variants.split(",") if name.strip()],
                  "tiny" if args.tiny else "full", args.output)
    for name, target in section["targets"].items():
        print(f"target {name}: {'met' if target['met'] else 'NOT met'} ({target['goal']})")
    print(f"wrote section {SECTION!r} of {args.output.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
