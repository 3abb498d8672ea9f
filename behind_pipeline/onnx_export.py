"""The course classifier as an ONNX graph (chapter 17): export, check, run with ONNX Runtime, quantize to int8.

``torch.onnx.export(..., dynamo=True)`` traces the model with ``torch.export`` and writes an ONNX graph whose
batch and sequence axes stay symbolic, so one file serves any batch of any length. ONNX Runtime runs it; its
session gets the same thread count as PyTorch and no spin-waiting threads, so a latency comparison is fair.
``onnxruntime.quantization.quantize_dynamic`` then stores the weights of its MatMuls (and, by default, of its
Gathers: the embedding tables) as int8, with activations quantized on the fly, as ``torch.ao`` does (chapter 15).

Files are made once and kept under ``.cache/onnx/<fingerprint>/``: the fingerprint hashes the weights, so a
retrained classifier gets a fresh export rather than a stale one.

    path = classifier_onnx_file()                  # export (about 6 s) or reuse
    onnx_classifier = OnnxClassifier(ort_session(path))
    predict_logits(onnx_classifier, tokenizer, texts)   # the book's one prediction path, unchanged
"""

import contextlib
import hashlib
import io
import logging
import warnings
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


def quantize_int8(source: str | Path, target: str | Path, op_types: list[str] | None = None) -> Path:
    """ONNX Runtime's dynamic int8 of the graph at ``source`` written to ``target``: int8 weights (one scale per
    tensor), activations quantized on the fly. ``op_types`` (default: ORT's list, MatMul and Gather among them)
    picks which operators are quantized."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with quiet():  # ORT suggests a shape-inference pre-pass; the parity checks show the result is right without it
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    return Path(target)


def weights_fingerprint(model_id: str) -> str:
    """A short hash of the model's weight file(s) and the torch version: it names the cache folder."""
    digest = hashlib.sha256(torch.__version__.encode())
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
    path = ONNX_DIR / weights_fingerprint(model_id) / "classifier.onnx"
    if not path.exists():
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        classifier = AutoModelForSequenceClassification.from_pretrained(model_id)
        temporary = path.with_suffix(".partial")  # an interrupted export never looks finished
        export_classifier(classifier, tokenizer, temporary).rename(path)
    return path


def classifier_onnx_int8_file(model_id: str | None = None) -> Path:
    """ORT dynamic int8 of :func:`classifier_onnx_file` (default operator list), made once and reused."""
    source = classifier_onnx_file(model_id)
    path = source.with_name("classifier-int8.onnx")
    if not path.exists():
        temporary = path.with_name("classifier-int8.partial.onnx")
        quantize_int8(source, temporary).rename(path)
    return path


def session_options(threads: int = NUM_THREADS):
    """ONNX Runtime session options for a fair comparison with PyTorch on a small CPU.

    ``threads`` threads for the work inside an operator (PyTorch runs with the same count), one for running
    operators side by side, and no spin-waiting: by default ORT's idle threads keep spinning on a core for a
    while, which makes ORT look faster alone and slows down whatever runs next to it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def ort_session(path: str | Path, threads: int = NUM_THREADS):
    """An ``onnxruntime.InferenceSession`` on the CPU with :func:`session_options`."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


class OnnxClassifier(torch.nn.Module):
    """An ONNX Runtime session dressed as a classifier: ``model(**encoding).logits``, so ``predict_logits`` and
    every other piece of the book that takes a classifier take it too.

    It feeds the session exactly the inputs its graph declares (as int64 NumPy arrays) and ignores the others the
    tokenizer returns (``token_type_ids``: all zero for one-sentence inputs, which is the exported default).
    """

    def __init__(self, session, num_labels: int = 2):
        super().__init__()
        self.session = session
        self.input_names = [node.name for node in session.get_inputs()]
        self.config = type("OnnxConfig", (), {"num_labels": num_labels})()

    def forward(self, **encoding) -> SequenceClassifierOutput:
        missing = [name for name in self.input_names if name not in encoding]
        if missing:
            raise ValueError(f"the graph needs {missing}; got {sorted(encoding)}")
        feed = {name: torch.as_tensor(encoding[name]).to(torch.int64).numpy() for name in self.input_names}
        (logits,) = self.session.run(list(OUTPUT_NAMES), feed)  # (batch, labels), float32
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))


def file_mib(path: str | Path) -> float:
    """Size of one file in MiB (2**20 bytes)."""
    return Path(path).stat().st_size / 2**20


def graph_axes(path_or_model) -> dict[str, list]:
    """Each graph input and output with its axes: a name (``'batch'``) where the axis is dynamic, else a size."""
    import onnx

    model = onnx.load(str(path_or_model)) if isinstance(path_or_model, str | Path) else path_or_model
    return {value.name: [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
            for value in list(model.graph.input) + list(model.graph.output)}
