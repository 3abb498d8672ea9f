"""Render the classroom pages' tables from the chapters and results/: learning objectives and run times.

    python tools/instructor_tables.py           # rewrite the tables in book/instructors.md and book/learners.md
    python tools/instructor_tables.py --check   # exit 1 if any table is out of date

Each table sits between two marker comments (``<!-- objectives:start -->`` ... ``<!-- objectives:end -->``), as
the README's chapter table does (tools/chapter_table.py). The objectives are each chapter's "You will learn"
bullets, read from its first cell; the run times come from results/runtimes.json (``make runtimes``). Only the
chapters the site builds (listed in _toc.yml) are rendered, so every link resolves.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

from blocks import exit_status, update
from notebook_files import ROOT, TITLE, about, doc_link, in_site, notebooks

BULLET = re.compile(r"^- ", re.MULTILINE)


def chapters() -> list[dict]:
    """Number, title, subtitle, stem and "You will learn" bullets of every chapter of the site, in order.

    A notebook in notebooks/ that _toc.yml does not list yet (a chapter being written) is left out.
    """
    found = []
    for path in notebooks(("notebooks",)):
        if not in_site(f"notebooks/{path.stem}"):
            continue
        first = nbformat.read(path, as_version=4).cells[0].source
        match = TITLE.search(first)
        number, title, subtitle = match.groups() if match else ("?", path.stem, "")
        _, _, rest = first.partition("You will learn:")
        block = rest.strip().split("\n\n")[0] if rest else ""
        bullets = [" ".join(item.split()).rstrip(",.") for item in BULLET.split(block) if item.strip()]
        found.append({"number": number, "title": title, "subtitle": subtitle, "stem": path.stem,
                      "bullets": bullets})
    return found


def objectives_block(found: list[dict]) -> list[str]:
    lines = []
    for chapter in found:
        lines += ["", f"**{doc_link('notebooks/' + chapter['stem'], chapter['number'] + '. ' + chapter['title'])}: "
                      f"{chapter['subtitle']}.** Learners will learn:", ""]
        lines += [f"- {bullet}" for bullet in chapter["bullets"]] or ["- (the chapter lists no objectives yet)"]
    return [*lines, ""]


def _exercises(stem: str) -> str | None:
    solution = f"solutions/{stem}_solutions"
    return solution if (ROOT / f"{solution}.ipynb").exists() else None


def runtimes_block(found: list[dict], runtimes: dict) -> list[str]:
    rows = ["", "| # | chapter | chapter notebook | solutions notebook (all exercises answered) |", "|---|---|---|---|"]
    for chapter in found:
        solution = _exercises(chapter["stem"])
        chapter_time = about(runtimes.get(f"notebooks/{chapter['stem']}.ipynb"))
        solution_time = about(runtimes.get(f"{solution}.ipynb")) if solution else "no exercises"
        rows.append(f"| {chapter['number']} | {doc_link('notebooks/' + chapter['stem'], chapter['title'])} "
                    f"| {chapter_time} | {solution_time} |")
    return [*rows, ""]


def learner_block(found: list[dict], runtimes: dict) -> list[str]:
    rows = ["", "| # | chapter | what you learn | run time of the chapter | exercises |", "|---|---|---|---|---|"]
    for chapter in found:
        solution = _exercises(chapter["stem"])
        exercises = doc_link(f"exercises/{chapter['stem']}_exercises", "exercises") if solution else "-"
        chapter_time = about(runtimes.get(f"notebooks/{chapter['stem']}.ipynb"))
        rows.append(f"| {chapter['number']} | {doc_link('notebooks/' + chapter['stem'], chapter['title'])} "
                    f"| {chapter['subtitle']} | {chapter_time} | {exercises} |")
    return [*rows, ""]


def blocks(runtimes: dict) -> dict[str, dict[str, list[str]]]:
    """page name -> marker name -> the lines between its markers."""
    found = chapters()
    return {"instructors.md": {"objectives": objectives_block(found), "runtimes": runtimes_block(found, runtimes)},
            "learners.md": {"chapter-times": learner_block(found, runtimes)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--book", type=Path, default=ROOT / "book", help="folder of the pages (default: book/)")
    parser.add_argument("--runtimes", type=Path, default=ROOT / "results" / "runtimes.json")
    args = parser.parse_args(argv)
    runtimes = json.loads(args.runtimes.read_text()) if args.runtimes.exists() else {}
    stale = []
    for page, tables in blocks(runtimes).items():
        stale += update(args.book / page, tables, args.check)
    print("\n".join(stale) if stale else "instructor and learner tables current")
    return exit_status(stale, args.check)


if __name__ == "__main__":
    sys.exit(main())
