"""Numbers the book renders as tables: each experiment notebook records its rows here, never typed by hand.

A training notebook has two settings (papermill ``parameters``): ``RUN = "small"``, what the stored notebook
and the tests execute, and ``RUN = "full"``, what ``make full`` executes. It records its results only when its
``RESULTS_DIR`` parameter is set (``make small`` / ``make full`` set it; the stored notebooks and nbval leave it
empty, so running the tests never rewrites a results file):

    record(RESULTS_DIR, "10_baselines", "TF-IDF + logistic regression", {"accuracy": 0.788, "macro_f1": 0.776})

writes ``results/<run>/10_baselines.json``; ``tools/results_tables.py`` renders every such file into the book's
results page and the README.
"""

import json
import platform
from datetime import date
from pathlib import Path

import torch


def write_section(path: str | Path, key: str, section: dict) -> dict:
    """Replace ``key`` in the JSON object at ``path`` (created if missing), keeping every other section: how the
    benchmarks (models, service, Ray Serve) share ``results/bench.json``. Returns the whole object."""
    path = Path(path)
    content = json.loads(path.read_text()) if path.exists() else {}
    if not isinstance(content, dict):
        raise ValueError(f"{path.name} should hold a JSON object of sections")
    content[key] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
    return content


def record(results_dir: str | Path | None, source: str, model: str, metrics: dict) -> dict:
    """Add (or replace) the row ``model`` in ``<results_dir>/<source>.json``; a no-op when ``results_dir`` is empty.

    Returns the row, so a notebook can print what it recorded.
    """
    row = {"model": model, **metrics}
    if not results_dir:
        return row
    path = Path(results_dir) / f"{source}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    content = json.loads(path.read_text()) if path.exists() else {"rows": []}
    content["rows"] = [existing for existing in content["rows"] if existing["model"] != model] + [row]
    content["machine"] = machine_description()
    content["measured_on"] = date.today().isoformat()
    content["versions"] = library_versions()
    path.write_text(json.dumps(content, indent=2) + "\n")
    return row


def machine_description() -> str:
    """What the numbers were measured on, e.g. ``x86_64, 2 torch threads, torch 2.13.0+cpu``."""
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def library_versions() -> dict[str, str]:
    """The versions of the libraries that shape a recorded score (a model card names them)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "tokenizers")}


def load_rows(results_dir: str | Path) -> list[dict]:
    """Every recorded row under ``results_dir``, file by file in name order (so chapter order)."""
    rows = []
    for path in sorted(Path(results_dir).glob("*.json")):
        rows += [{"source": path.stem, **row} for row in json.loads(path.read_text())["rows"]]
    return rows
