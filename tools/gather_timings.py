"""Copy the step timings recorded by the Makefile (.cache/timings/) into results/setup.json, keeping old ones."""

import json

from notebook_files import ROOT

if __name__ == "__main__":
    target = ROOT / "results" / "setup.json"
    timings = json.loads(target.read_text()) if target.exists() else {}
    for recorded in sorted((ROOT / ".cache" / "timings").glob("*")):
        timings[recorded.name] = float(recorded.read_text())
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
    print(json.dumps(timings))
