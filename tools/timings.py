"""Set-up times and training summaries, measured by the Makefile and gathered into results/.

    python tools/timings.py record STEP START_EPOCH_SECONDS   # a Makefile step took this long (.cache/timings/STEP)
    python tools/timings.py gather                            # `make runtimes`: into results/*.json

``record`` runs before the virtual environment exists (``make install`` calls it with the system Python), so
this file needs only the standard library. ``gather`` writes the recorded step timings into results/setup.json
(a step not recorded this time keeps its old value) and copies each prepared model's training summary into
results/ (prepare.json, prepare_generator.json, prepare_router.json), which the README and the site render.
"""

import json
import shutil
import sys
import time

from behind_pipeline.paths import MODELS_DIR as MODELS
from behind_pipeline.paths import PROJECT_ROOT as ROOT  # the one definition of the project root

TIMINGS = ROOT / ".cache" / "timings"
# results file -> the model folder whose training summary it copies (chapter 0-7's classifier, chapter 8's
# generator, chapter 19's router).
SUMMARIES = {"prepare.json": "minilm-rotten-tomatoes", "prepare_generator.json": "tiny-gpt-hamlet",
             "prepare_router.json": "minilm-ticket-router"}


def record(step: str, start: float) -> None:
    TIMINGS.mkdir(parents=True, exist_ok=True)
    seconds = time.time() - start
    (TIMINGS / step).write_text(f"{seconds:.1f}\n")
    print(f"{step}: {seconds:.1f} s")


def gather() -> None:
    target = ROOT / "results" / "setup.json"
    timings = json.loads(target.read_text()) if target.exists() else {}
    for recorded in sorted(TIMINGS.glob("*")):
        timings[recorded.name] = float(recorded.read_text())
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
    print(json.dumps(timings))
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
