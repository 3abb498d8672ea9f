"""Run the experiment notebooks with papermill at one size and record their results into ``results/<run>/``.

    python tools/run_experiments.py --run small            # the stored notebooks' settings (make small)
    python tools/run_experiments.py --run full             # the full settings (make full)
    python tools/run_experiments.py --run full notebooks/14_lora.ipynb

An experiment notebook has a cell tagged ``parameters`` that defines ``RUN = "small"`` and ``RESULTS_DIR = ""``.
Papermill injects ``RUN`` and ``RESULTS_DIR = "results/<run>"``; the notebook's ``record(...)`` calls
(:mod:`behind_pipeline.results`) then write its rows. The executed copies go to ``.cache/runs/<run>/`` (never over
the stored notebooks), and ``tools/results_tables.py`` renders the tables afterwards.

Cells tagged ``raises-exception`` (a chapter's pitfalls, which fail on purpose) are left out of the run: papermill
stops at any error, tag or no tag, and they record nothing.
"""

import argparse
import shutil
import sys
import time

import nbformat
import papermill

from behind_pipeline.paths import configure_environment

from notebook_files import ROOT, notebooks

RUNS = ("small", "full")


def is_experiment(path) -> bool:
    """A notebook whose ``parameters`` cell defines RUN and RESULTS_DIR."""
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return "RUN =" in cell.source and "RESULTS_DIR =" in cell.source
    return False


def without_raising_cells(path, destination):
    """Write ``path`` to ``destination`` without its cells tagged ``raises-exception``; return how many went."""
    nb = nbformat.read(path, as_version=4)
    kept = [cell for cell in nb.cells if "raises-exception" not in cell.metadata.get("tags", [])]
    dropped, nb.cells = len(nb.cells) - len(kept), kept
    nbformat.write(nb, destination)
    return dropped


def experiment_notebooks() -> list:
    return [path for path in notebooks(("notebooks",)) if is_experiment(path)]


def main() -> int:
    configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", choices=RUNS, required=True)
    parser.add_argument("paths", nargs="*", help="notebooks to run (default: every experiment notebook)")
    args = parser.parse_args()
    chosen = [(ROOT / name).resolve() for name in args.paths] or experiment_notebooks()
    results_dir = ROOT / "results" / args.run
    output_dir = ROOT / ".cache" / "runs" / args.run
    output_dir.mkdir(parents=True, exist_ok=True)
    if not args.paths:
        shutil.rmtree(results_dir, ignore_errors=True)  # a whole run replaces the previous one
    for path in chosen:
        started = time.perf_counter()
        runnable = output_dir / f"{path.stem}.input.ipynb"
        without_raising_cells(path, runnable)
        papermill.execute_notebook(
            str(runnable), str(output_dir / path.name), cwd=str(path.parent), kernel_name="python3",
            parameters={"RUN": args.run, "RESULTS_DIR": str(results_dir)}, progress_bar=False,
        )
        print(f"{path.relative_to(ROOT)} ({args.run}): {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
