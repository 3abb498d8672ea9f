"""Gather measured set-up numbers into results/: step timings recorded by the Makefile (.cache/timings/, kept
when absent) into setup.json, the prepared classifier's training summary into prepare.json, and chapter 8's generator's
summary into prepare_generator.json, chapter 19's router's into prepare_router.json."""

import json
import shutil

from notebook_files import ROOT

if __name__ == "__main__":
    target = ROOT / "results" / "setup.json"
    timings = json.loads(target.read_text()) if target.exists() else {}
    for recorded in sorted((ROOT / ".cache" / "timings").glob("*")):
        timings[recorded.name] = float(recorded.read_text())
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
    summary = ROOT / ".cache" / "models" / "minilm-rotten-tomatoes" / "training_summary.json"
    shutil.copyfile(summary, ROOT / "results" / "prepare.json")
    generator = ROOT / ".cache" / "models" / "tiny-gpt-hamlet" / "training_summary.json"  # chapter 8's model
    shutil.copyfile(generator, ROOT / "results" / "prepare_generator.json")
    router = ROOT / ".cache" / "models" / "minilm-ticket-router" / "training_summary.json"  # chapter 19's model
    shutil.copyfile(router, ROOT / "results" / "prepare_router.json")
    print(json.dumps(timings), summary.read_text(), generator.read_text(), router.read_text())
