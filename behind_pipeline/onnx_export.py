"""The course classifier as an ONNX graph (chapter 17): export, check, run with ONNX Runtime, quantize to int8.

``torch.onnx.export(..., dynamo=True)`` traces the model with ``torch.export`` and writes an ONNX graph whose
batch and sequence axes stay symbolic, so one file serves any batch of any length. ONNX Runtime runs it; its
session gets the same thread count as PyTorch and no spin-waiting threads. When a session is created, ONNX Runtime
rewrites the graph (constant folding, fusions) at the chosen optimization level; ``optimized_onnx_file`` saves that
rewritten graph, so its nodes can be counted and a later session can load it without optimizing again.
``onnxruntime.quantization.quantize_dynamic`` then stores the weights of its MatMuls (and, by default, of its
Gathers: the embedding tables) as int8, with activations quantized on the fly, as ``torch.ao`` does (chapter 15),
after ORT's own pre-processing (``quant_pre_process``: shape inference and basic graph optimization).

Files are made once and kept under ``.cache/onnx/<fingerprint>/``: the fingerprint hashes the weights, the code
that writes the files and the versions of the libraries that do (torch, onnx, onnxscript, onnxruntime), so a
retrained classifier, a changed exporter or a new release gets fresh files rather than stale ones.

    path = classifier_onnx_file()                  # export (about 6 s) or reuse
    onnx_classifier = OnnxClassifier(ort_session(path))
    predict_logits(onnx_classifier, tokenizer, texts)   # the book's one prediction path, unchanged
"""

import contextlib
import hashlib
import inspect
import io
import json
import logging
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from behind_pipeline.paths import CACHE_DIR
from behind_pipeline.runtime import NUM_THREADS

ONNX_DIR = CACHE_DIR / "onnx"
# The two inputs every encoder classifier needs: without attention_mask, padding would count as text.
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("logits",)
# The exporter warns about packages this book does not use (torchvision) and about internal deprecations; none of
# it concerns the exported graph, which the chapter checks with onnx.checker and by parity instead.
QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "root")
# The libraries whose release changes what is written: the exporter, its translations, the graph format, and ORT
# (its quantizer and its graph optimizer write the int8 and the optimized files).
EXPORT_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime")
# ONNX Runtime's graph optimization levels, by the names the chapter uses.
OPTIMIZATION_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class LogitsOnly(torch.nn.Module):
    """``classifier(input_ids, attention_mask).logits``: positional tensors in, one tensor out, as ONNX wants."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(input_ids=input_ids, attention_mask=attention_mask).logits  # (batch, labels)


@contextlib.contextmanager
def quiet():
    """Keep the exporter's and the quantizer's progress lines and warnings out of stored outputs."""
    levels = {name: logging.getLogger(name if name != "root" else None).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name if name != "root" else None).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name if name != "root" else None).setLevel(level)


def export_classifier(classifier: torch.nn.Module, tokenizer, path: str | Path) -> Path:
    """Export ``classifier`` to one ONNX file at ``path``, inputs ``input_ids`` and ``attention_mask`` of shape
    (batch, sequence), both axes dynamic; returns the path.

    The example batch has two texts of different lengths (so padding and the mask are traced), but the graph
    keeps ``batch`` and ``sequence`` symbolic: any batch size and length run later.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = tokenizer(["a fine film", "not good at all, and far too long"], padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic_shapes = {name: {0: batch, 1: sequence} for name in INPUT_NAMES}
    module = LogitsOnly(classifier).eval()  # dropout off, as at inference
    with quiet():
        torch.onnx.export(module, tuple(example[name] for name in INPUT_NAMES), str(path), dynamo=True,
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_shapes=dynamic_shapes, external_data=False)  # one self-contained file
    return path


def pre_process(source: str | Path, target: str | Path) -> Path:
    """ORT's pre-processing before quantization (``quant_pre_process``): symbolic shape inference, ORT's basic
    graph optimizations (constant folding, redundant nodes removed), then ONNX shape inference, written to
    ``target``. The quantizer warns when a graph has not been through it: with every tensor's shape known it can
    tell which MatMuls have a constant weight.

    ``auto_merge=True``: on the exported BERT, symbolic shape inference meets a broadcast between ``sequence`` and
    ``Min(512, sequence)`` (the position ids, sliced to the text's length) and, without merging the two, stops with
    "Incomplete symbolic shape inference" (chapter 17 shows it).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with quiet():
        quant_pre_process(str(source), str(target), auto_merge=True)
    return Path(target)


def quantize_int8(source: str | Path, target: str | Path, op_types: list[str] | None = None,
                  per_channel: bool = False, reduce_range: bool = False) -> Path:
    """ONNX Runtime's dynamic int8 of the graph at ``source`` written to ``target``: int8 weights, activations
    quantized on the fly (uint8). ``op_types`` (default: ORT's list, MatMul and Gather among them) picks which
    operators are quantized; ``per_channel`` gives each output column of a weight its own scale (default: one
    per tensor); ``reduce_range`` keeps weights in 7 bits (-64..63), for x86 CPUs without VNNI, whose u8 x s8
    instruction adds pairs of products into a saturating int16."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with quiet():  # progress lines; its advice to pre-process is followed by classifier_onnx_int8_file
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
                         per_channel=per_channel, reduce_range=reduce_range)
    return Path(target)


def package_versions(names: tuple[str, ...] = EXPORT_PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"none"`` for one that is missing)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "none"
    return found


def writer_source() -> str:
    """The source of everything that writes a cached file: a change of the exporter's code changes the hash."""
    return json.dumps([INPUT_NAMES, OUTPUT_NAMES]) + "".join(inspect.getsource(code) for code in WRITERS)


def export_fingerprint(model_id: str) -> str:
    """A short hash of the model's weight file(s) and config, the code that writes the files and the versions of
    the libraries that write them (:data:`EXPORT_PACKAGES`): it names the cache folder."""
    digest = hashlib.sha256(json.dumps(package_versions(), sort_keys=True).encode())
    digest.update(writer_source().encode())
    folder = Path(model_id)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("config.json")) if folder.is_dir() else []
    if not files:  # a Hub id (online mode): the id itself names the export
        digest.update(model_id.encode())
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def classifier_onnx_file(model_id: str | None = None) -> Path:
    """The classifier's ONNX file, exported on first use and reused after (``.cache/onnx/<fingerprint>/``)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from behind_pipeline.models import classifier_id

    model_id = model_id or classifier_id()
    path = ONNX_DIR / export_fingerprint(model_id) / "classifier.onnx"
    if not path.exists():
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        classifier = AutoModelForSequenceClassification.from_pretrained(model_id)
        temporary = path.with_suffix(".partial")  # an interrupted export never looks finished
        export_classifier(classifier, tokenizer, temporary).rename(path)
    return path


def classifier_onnx_preprocessed_file(model_id: str | None = None) -> Path:
    """:func:`classifier_onnx_file` after ORT's :func:`pre_process`, made once and reused."""
    source = classifier_onnx_file(model_id)
    path = source.with_name("classifier-preprocessed.onnx")
    if not path.exists():
        pre_process(source, path.with_name("classifier-preprocessed.partial.onnx")).rename(path)
    return path


def classifier_onnx_int8_file(model_id: str | None = None, per_channel: bool = True,
                              reduce_range: bool = False, pre_processed: bool = True) -> Path:
    """ORT dynamic int8 of the classifier's graph (default operator list), made once and reused.

    The default is what chapter 17 measured best on its CPU: the graph pre-processed first, as ORT advises
    (:func:`classifier_onnx_preprocessed_file`), one scale per output column of each weight (``per_channel``:
    fewer labels changed against fp32 than one scale per tensor) and 8-bit weights (``reduce_range=False``: the
    7-bit weights meant for CPUs without VNNI changed more). The other settings are kept under their own names."""
    source = classifier_onnx_preprocessed_file(model_id) if pre_processed else classifier_onnx_file(model_id)
    suffix = "".join(part for part, chosen in (("-per-channel", per_channel), ("-reduce-range", reduce_range),
                                               ("-raw", not pre_processed)) if chosen)
    path = source.with_name(f"classifier-int8{suffix}.onnx")
    if not path.exists():
        temporary = path.with_name(f"classifier-int8{suffix}.partial.onnx")
        quantize_int8(source, temporary, per_channel=per_channel, reduce_range=reduce_range).rename(path)
    return path


def session_options(threads: int = NUM_THREADS, level: str = "all", optimized_path: str | Path | None = None,
                    spinning: bool = False, profile_prefix: str | None = None):
    """ONNX Runtime session options for a fair comparison with PyTorch on a small CPU.

    ``threads`` threads for the work inside an operator (PyTorch runs with the same count), one for running
    operators side by side, and no spin-waiting (``spinning=False``): by default ORT's idle threads keep spinning
    on a core for a while, which makes ORT look faster alone and slows down whatever runs next to it. ``level``
    is the graph optimization level (a key of :data:`OPTIMIZATION_LEVELS`; ORT's default is ``"all"``);
    ``optimized_path`` makes the session save the graph it optimized; ``profile_prefix`` turns ORT's profiler on.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[level])
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    allow = "1" if spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", allow)
    options.add_session_config_entry("session.inter_op.allow_spinning", allow)
    return options


def ort_session(path: str | Path, threads: int = NUM_THREADS, **options):
    """An ``onnxruntime.InferenceSession`` on the CPU with :func:`session_options` (``options`` go to it)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads, **options), providers=["CPUExecutionProvider"])


def optimized_onnx_file(source: str | Path, level: str = "extended") -> Path:
    """The graph ONNX Runtime runs after optimizing ``source`` at ``level``, saved once next to it
    (``classifier-optimized-<level>.onnx``) and reused.

    A session that loads this file with ``level="disabled"`` skips the optimization at start-up (ORT's offline
    mode). ORT's documentation asks for the file to be made with the same execution provider and on hardware like
    the one that runs it: the folder's fingerprint pins the ORT version; the CPU is the one of this machine.
    """
    source = Path(source)
    path = source.with_name(f"{source.stem}-optimized-{level}.onnx")
    if not path.exists():
        import onnxruntime as ort

        temporary = path.with_name(f"{source.stem}-optimized-{level}.partial.onnx")
        options = session_options(level=level, optimized_path=temporary)
        # At "all", ORT's C++ logger warns that the file may hold optimizations for this CPU only (said above).
        options.log_severity_level = 3
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        temporary.rename(path)
    return path


def profile_by_op_type(session, skip_runs: int = 0) -> dict[str, dict[str, float]]:
    """End a profiling session (made with ``profile_prefix``) and sum its node events by operator type:
    ``{op_type: {"ms": total milliseconds, "calls": node executions}}``, plus ``"runs"``: the ``model_run``
    events, the whole of each ``session.run``. The first ``skip_runs`` runs (the warm-up) are left out. The
    profile file is deleted."""
    path = Path(session.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    since = starts[skip_runs] if skip_runs < len(starts) else float("inf")
    totals: dict[str, dict[str, float]] = {}
    for event in events:
        if event.get("ts", -1) < since:
            continue
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            key = event.get("args", {}).get("op_name", "?")
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            key = "runs"
        else:
            continue
        entry = totals.setdefault(key, {"ms": 0.0, "calls": 0})
        entry["ms"] += event["dur"] / 1000  # microseconds in the trace
        entry["calls"] += 1
    return totals


class OnnxClassifier(torch.nn.Module):
    """An ONNX Runtime session dressed as a classifier: ``model(**encoding).logits``, so ``predict_logits`` and
    every other piece of the book that takes a classifier take it too.

    It feeds the session exactly the inputs its graph declares (as int64 NumPy arrays) and ignores the others the
    tokenizer returns (``token_type_ids``: all zero for one-sentence inputs, which is the exported default). Given
    the classifier's ``config`` (its ``id2label``), it also goes into ``pipeline("text-classification", ...)``,
    which asks a model for ``config``, ``device``, ``dtype`` and ``can_generate()``: what optimum's
    ``ORTModelForSequenceClassification`` provides.
    """

    def __init__(self, session, num_labels: int = 2, config=None):
        super().__init__()
        self.session = session
        self.input_names = [node.name for node in session.get_inputs()]
        self.config = config if config is not None else type("OnnxConfig", (), {"num_labels": num_labels})()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # the session's provider is the CPU's; tensors come and go through NumPy

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def can_generate(self) -> bool:
        return False

    def forward(self, **encoding) -> SequenceClassifierOutput:
        missing = [name for name in self.input_names if name not in encoding]
        if missing:
            raise ValueError(f"the graph needs {missing}; got {sorted(encoding)}")
        feed = {name: torch.as_tensor(encoding[name]).to(torch.int64).numpy() for name in self.input_names}
        (logits,) = self.session.run(list(OUTPUT_NAMES), feed)  # (batch, labels), float32
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))


def graph_axes(path_or_model) -> dict[str, list]:
    """Each graph input and output with its axes: a name (``'batch'``) where the axis is dynamic, else a size."""
    import onnx

    model = onnx.load(str(path_or_model)) if isinstance(path_or_model, str | Path) else path_or_model
    return {value.name: [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
            for value in list(model.graph.input) + list(model.graph.output)}


# What writes the cached files, as defined here (a test's stand-in for one of them does not change the hash).
WRITERS = (LogitsOnly, export_classifier, pre_process, quantize_int8, session_options, optimized_onnx_file)


def torch_latency_in_fresh_process(batch_sizes: tuple[int, ...] = (1, 8), warmup: int = 3, repeats: int = 20,
                                   omp_wait_policy: str | None = None) -> dict[int, dict[str, float]]:
    """PyTorch fp32 latency of the course classifier (median and p95 per batch size of the first test reviews,
    ``measure.latency_summary``) measured in a new Python process whose ``OMP_WAIT_POLICY`` is ``omp_wait_policy``
    (``None``: unset, libgomp's default).

    PyTorch's CPU threads are OpenMP threads (libgomp in the PyPI wheel), and libgomp reads ``OMP_WAIT_POLICY``
    once, when the library loads with ``import torch``: a process that already imported torch cannot change it,
    so each setting needs a process of its own. Unset, an idle thread spins for a while before it sleeps;
    ``PASSIVE`` makes it sleep at once, like ORT's threads with spinning off.
    """
    import os
    import subprocess
    import sys

    env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    if omp_wait_policy is not None:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    settings = json.dumps({"batch_sizes": list(batch_sizes), "warmup": warmup, "repeats": repeats})
    command = [sys.executable, "-m", "behind_pipeline.onnx_export", "--time-torch", settings]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the timing process failed:\n{result.stderr[-2000:]}")
    return {int(size): figures for size, figures in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def _time_torch(settings: dict) -> dict[str, dict[str, float]]:
    """The body of :func:`torch_latency_in_fresh_process`, run in the new process."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from behind_pipeline.data import load_rotten_tomatoes
    from behind_pipeline.measure import latency_samples, latency_summary
    from behind_pipeline.models import classifier_id

    torch.set_num_threads(NUM_THREADS)
    tokenizer = AutoTokenizer.from_pretrained(classifier_id())
    classifier = AutoModelForSequenceClassification.from_pretrained(classifier_id()).eval()
    texts = list(load_rotten_tomatoes()["test"]["text"][: max(settings["batch_sizes"])])
    found = {}
    for batch_size in settings["batch_sizes"]:
        batch = tokenizer(texts[:batch_size], padding=True, return_tensors="pt")

        def forward(batch=batch):
            with torch.inference_mode():
                return classifier(**batch).logits

        found[str(batch_size)] = latency_summary(latency_samples(forward, settings["warmup"], settings["repeats"]))
    return found


if __name__ == "__main__":
    import sys

    from behind_pipeline.paths import configure_environment

    if len(sys.argv) == 3 and sys.argv[1] == "--time-torch":
        configure_environment()
        print(json.dumps(_time_torch(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m behind_pipeline.onnx_export --time-torch '{\"batch_sizes\": [1], ...}'")
