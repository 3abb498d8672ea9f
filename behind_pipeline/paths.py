"""Where the book keeps its files: every cache and downloaded asset lives inside the project folder.

``configure_environment`` is called by every entry point (the root ``conftest.py`` before pytest starts any
kernel, ``setup_chapter`` in each notebook, the tools and the ``python -m`` commands), and the Makefile exports the
same variables (a test keeps the two lists equal), so Hugging Face, datasets, matplotlib and Jupyter never write to
the reader's home directory. Importing the package sets nothing.
"""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = PROJECT_ROOT / ".cache"
WHEELS_DIR = CACHE_DIR / "wheels"
ASSETS_DIR = CACHE_DIR / "assets"
ENCODER_DIR = ASSETS_DIR / "all-MiniLM-L6-v2"
CORPUS_FILE = ASSETS_DIR / "rotten_tomatoes_corpus_full.csv.bz2"
# Every model the book trains (make prepare, chapter 19's routers, the online stand-ins) lives under one folder.
MODELS_DIR = CACHE_DIR / "models"
# The course's fine-tuned sentiment classifier, written by `make prepare`.
CLASSIFIER_DIR = MODELS_DIR / "minilm-rotten-tomatoes"
# Chapter 8's tiny GPT-2, trained on Hamlet once and shipped; `make prepare` copies it here (tiny_gpt.py).
GENERATOR_DIR = MODELS_DIR / "tiny-gpt-hamlet"
# Logits that several chapters, solutions and tests share (predict.cached_predict_logits).
LOGITS_DIR = CACHE_DIR / "logits"
RESULTS_DIR = PROJECT_ROOT / "results"
# The benchmarks' one file: the models (make bench), the service (make bench-service) and Ray Serve (make bench-ray)
# each rewrite their own section of it.
BENCH_FILE = RESULTS_DIR / "bench.json"

# Environment variables that would otherwise default to somewhere under the home directory.
_CACHE_VARIABLES = {
    "HF_HOME": CACHE_DIR / "huggingface",
    "HF_DATASETS_CACHE": CACHE_DIR / "huggingface" / "datasets",
    "XDG_CACHE_HOME": CACHE_DIR / "xdg",
    "MPLCONFIGDIR": CACHE_DIR / "matplotlib",
    "TORCH_HOME": CACHE_DIR / "torch",
    "PIP_CACHE_DIR": CACHE_DIR / "pip",
    "IPYTHONDIR": CACHE_DIR / "ipython",
    "JUPYTER_CONFIG_DIR": CACHE_DIR / "jupyter" / "config",
    "JUPYTER_DATA_DIR": CACHE_DIR / "jupyter" / "data",
    "JUPYTER_RUNTIME_DIR": CACHE_DIR / "jupyter" / "runtime",
    "HYPOTHESIS_STORAGE_DIRECTORY": CACHE_DIR / "hypothesis",  # the service's property tests (chapter 18)
    "RAY_TMPDIR": CACHE_DIR / "ray",  # Ray's session folders, logs and sockets (chapter 20), not /tmp/ray
}


def configure_environment() -> None:
    """Point caches into the project unless the caller already chose a place."""
    for name, folder in _CACHE_VARIABLES.items():
        os.environ.setdefault(name, str(folder))
    if not is_online():
        # Offline is the default: the Hub is never contacted, even for a metadata check.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray (chapter 20) reports nothing to anyone


def is_online() -> bool:
    """True when the reader asked for Hub models with ``BTP_ONLINE=1``."""
    return os.environ.get("BTP_ONLINE", "0").strip().lower() in {"1", "true", "yes"}
