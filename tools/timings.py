"""Set-up times and training summaries, measured by the Makefile and gathered into results/.

    python tools/timings.py record STEP START_EPOCH_SECONDS   # a Makefile step took this long (.cache/timings/STEP)
    python tools/timings.py gather                            # `make runtimes`: into results/*.json

``record`` runs in the project's virtual environment once ``make install`` has built it, and notes the CPU next
to the time. ``gather`` writes the recorded step timings into results/setup.json and copies each prepared model's
training summary into results/ (prepare.json, prepare_generator.json, prepare_router.json), which the README and
the site render. setup.json holds the figures of one CPU (its ``"cpu"`` entry): a step not recorded this time
keeps its old value only if it was measured on the same CPU, so the README never adds up times from two machines.
"""

import json
import shutil
import sys
import time
from pathlib import Path

from behind_pipeline.paths import MODELS_DIR as MODELS
from behind_pipeline.paths import PROJECT_ROOT as ROOT  # the one definition of the project root
from behind_pipeline.runtime import cpu_model

TIMINGS = ROOT / ".cache" / "timings"
SETUP_FILE = ROOT / "results" / "setup.json"
# results file -> the model folder whose training summary it copies (chapter 0-7's classifier, chapter 8's
# generator, chapter 19's router).
SUMMARIES = {"prepare.json": "minilm-rotten-tomatoes", "prepare_generator.json": "tiny-gpt-hamlet",
             "prepare_router.json": "minilm-ticket-router"}


def record(step: str, start: float, timings: Path = TIMINGS) -> None:
    timings.mkdir(parents=True, exist_ok=True)
    seconds = time.time() - start
    (timings / step).write_text(json.dumps({"seconds": round(seconds, 1), "cpu": cpu_model()}) + "\n")
    print(f"{step}: {seconds:.1f} s")


def with_time(figures: dict, name: str, seconds: float, cpu: str, file: str) -> dict:
    """``figures`` (one results file, which holds one CPU's times under its ``"cpu"`` entry) with one more time,
    measured on ``cpu``. A time from another CPU starts the file afresh, so the book never shows two machines'
    times as one. results/setup.json (``gather``) and results/runtimes.json (``execute_notebooks.py --measure``)
    both keep this rule."""
    if figures.get("cpu") != cpu:
        dropped = sorted(set(figures) - {"cpu"})
        if dropped:
            print(f"{file}: dropped the {len(dropped)} time(s) measured on {figures.get('cpu', 'a CPU not recorded')}"
                  f", not {cpu} ({', '.join(dropped)}); measure them again here")
        figures = {"cpu": cpu}
    return {**figures, name: round(seconds, 1)}


def gather_setup(timings: Path = TIMINGS, target: Path = SETUP_FILE) -> dict:
    """Merge the recorded steps into ``target``; the steps of another CPU (or of none named) are dropped."""
    found = json.loads(target.read_text()) if target.exists() else {}
    for recorded in sorted(timings.glob("*")):
        try:
            entry = json.loads(recorded.read_text())
            seconds, cpu = float(entry["seconds"]), str(entry["cpu"])
        except (ValueError, TypeError, KeyError):  # a bare number: recorded before the CPU was noted
            print(f"skipped {recorded.name}: it does not say which CPU it was measured on; run the step again")
            continue
        found = with_time(found, recorded.name, seconds, cpu, target.name)
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    return found


def gather() -> None:
    print(json.dumps(gather_setup()))
    for name, folder in SUMMARIES.items():
        summary = MODELS / folder / "training_summary.json"
        shutil.copyfile(summary, ROOT / "results" / name)
        print(summary.read_text())


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"] and len(sys.argv) == 4:
        record(sys.argv[2], float(sys.argv[3]))
    elif sys.argv[1:] == ["gather"]:
        gather()
    else:
        sys.exit(__doc__)
