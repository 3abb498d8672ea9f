"""Record how long a Makefile step took: ``record_time.py STEP START_EPOCH_SECONDS``.

Writes ``.cache/timings/STEP`` (untracked); ``make runtimes`` gathers them into results/setup.json.
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    step, start = sys.argv[1], float(sys.argv[2])
    folder = ROOT / ".cache" / "timings"
    folder.mkdir(parents=True, exist_ok=True)
    seconds = time.time() - start
    (folder / step).write_text(f"{seconds:.1f}\n")
    print(f"{step}: {seconds:.1f} s")
