"""Execute notebooks in place (fresh kernel, working directory = the notebook's folder) and store their outputs.

    python tools/execute_notebooks.py notebooks/01_tokenizer.ipynb ...
    python tools/execute_notebooks.py --measure ...   # also record each run time in results/runtimes.json

Each notebook records the kind of CPU its outputs were made on (``behind_pipeline/nbval_cpu.py`` compares the
cells tagged ``depends-on-cpu`` only there).

Run times are measured here, one notebook after the other on an otherwise idle machine, and rendered by
``tools/chapter_table.py`` into the README table and each chapter's "Runs in about" line. results/runtimes.json
names the CPU they were measured on (its ``"cpu"`` entry) and holds the times of that CPU only.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from behind_pipeline.nbval_cpu import MADE_ON, METADATA_KEY
from behind_pipeline.paths import LOGITS_DIR, configure_environment
from behind_pipeline.runtime import cpu_kind, cpu_model

from clean_notebooks import clean
from notebook_files import ROOT
from timings import with_time

RUNTIMES_FILE = ROOT / "results" / "runtimes.json"


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    nb.metadata[METADATA_KEY] = {MADE_ON: cpu_kind()}
    clean(nb)
    path.write_text(nbformat.writes(nb) + "\n")
    return seconds


def main() -> int:
    configure_environment()  # Jupyter and IPython caches inside the project, for the kernels this starts
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="write run times to results/runtimes.json")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    for name in args.paths:
        path = (ROOT / name).resolve()
        if args.measure:  # a reader who opens this chapter alone computes the logits chapters share: time that
            shutil.rmtree(LOGITS_DIR, ignore_errors=True)
        seconds = execute(path)
        print(f"{path.relative_to(ROOT)}: {seconds:.1f} s", flush=True)
        if args.measure:  # read and write back at once, so that a run beside this one loses no entry
            runtimes = json.loads(RUNTIMES_FILE.read_text()) if RUNTIMES_FILE.exists() else {}
            runtimes = with_time(runtimes, str(path.relative_to(ROOT)), seconds, cpu_model(), RUNTIMES_FILE.name)
            RUNTIMES_FILE.parent.mkdir(exist_ok=True)
            RUNTIMES_FILE.write_text(json.dumps(dict(sorted(runtimes.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
