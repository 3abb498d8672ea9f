"""The drift canary's results (tools/canary.py): pytest's junit XML read back as cases, one per unit test or notebook
cell (with the cell's source and diff), merged over runs, with the outcome each had in the pinned environment."""

import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from canary_versions import ANSI

from behind_pipeline.paths import PROJECT_ROOT as ROOT

# The folders make test-notebooks gives nbval (tests/test_canary.py compares them with the Makefile).
NOTEBOOK_TARGETS = ["notebooks", "solutions", "book"]


@dataclass
class Case:
    """One test case of a junit XML: a unit test or one notebook cell."""

    suite: str  # "unit" or "notebooks"
    test: str  # tests/test_ch05.py::test_x or notebooks/05_x.ipynb::Cell 12
    outcome: str  # "passed", "failed", "error" or "skipped"
    message: str = ""
    details: str = ""
    notebook: str = ""
    cell: int | None = None  # nbval's count: the cell's index among the notebook's code cells
    cell_source: str = ""  # the cell's first lines, so a reader finds it
    pinned_outcome: str = ""  # its outcome in the pinned .venv (``recheck``), "" when not rechecked
    expected: str = ""  # why the break is expected after a bump (a cell that prints the versions), "" if not


def test_id(classname: str, name: str, known_files: list[str]) -> tuple[str, str]:
    """Undo pytest's junit mangling (``tests.test_x.TestA`` + ``test_b``) -> (``tests/test_x.py::TestA::test_b``, file).

    ``known_files`` are project-relative paths of test files and notebooks; their dotted forms are matched first
    (longest first), so ``notebooks.05_x.ipynb`` becomes ``notebooks/05_x.ipynb`` whatever dots its name holds.
    """
    for path in sorted(known_files, key=len, reverse=True):
        dotted = re.sub(r"\.py$", "", path).replace("/", ".")
        if classname == dotted or classname.startswith(dotted + "."):
            rest = classname[len(dotted) :].lstrip(".")
            parts = [path] + ([*rest.split(".")] if rest else []) + [name]
            return "::".join(parts), path
    return f"{classname}::{name}", ""


def code_cell_source(notebook: Path, index: int, lines: int = 3) -> str:
    """The first ``lines`` lines of the notebook's code cell number ``index`` (nbval's ``Cell N``)."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return ""
    code = [cell for cell in cells if cell.get("cell_type") == "code"]
    if not 0 <= index < len(code):
        return ""
    source = code[index].get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    return "\n".join(source.splitlines()[:lines])


def read_junit(path: Path, suite: str, root: Path = ROOT, known_files: list[str] | None = None) -> list[Case]:
    """Every test case of a junit XML written by pytest, with nbval cells mapped to their notebook."""
    if known_files is None:
        known_files = project_files(root)
    cases = []
    for element in ElementTree.parse(path).getroot().iter("testcase"):
        test, file = test_id(element.get("classname", ""), element.get("name", ""), known_files)
        outcome, message, details = "passed", "", ""
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = element.find(tag)
            if found is not None:
                outcome = name
                message = ANSI.sub("", found.get("message", "") or "").strip()
                details = ANSI.sub("", found.text or "").strip()
                break
        case = Case(suite=suite, test=test, outcome=outcome, message=message, details=details)
        cell = re.fullmatch(r"Cell (\d+)", element.get("name", ""))
        if file.endswith(".ipynb") and cell:
            case.notebook, case.cell = file, int(cell.group(1))
            case.cell_source = code_cell_source(root / file, case.cell)
        elif file.endswith(".ipynb"):
            case.notebook = file  # a notebook that failed before its cells were collected
        cases.append(case)
    return cases


def project_files(root: Path = ROOT) -> list[str]:
    """Project-relative paths of the test files and checked notebooks (to map junit names back to files)."""
    found = [p for p in (root / "tests").rglob("*.py")]
    for folder in NOTEBOOK_TARGETS:
        found += (root / folder).glob("*.ipynb")
    return sorted(str(p.relative_to(root)) for p in found if ".ipynb_checkpoints" not in p.parts)


def merge_cases(runs: list[list[Case]]) -> list[Case]:
    """Cases of several runs, in order: a test run again (a later part) keeps its latest outcome."""
    merged: dict[tuple[str, str], Case] = {}
    for cases in runs:
        for case in cases:
            merged.pop((case.suite, case.test), None)
            merged[(case.suite, case.test)] = case
    return list(merged.values())


def cell_diff(details: str, limit: int = 40) -> str:
    """The part of nbval's message a reader needs: from the reason (diff or traceback) on, without the input."""
    lines = details.splitlines()
    for marker in ("Traceback:", "Cell outputs differ", "mismatch", "Error"):
        for index, line in enumerate(lines):
            if marker in line:
                start = index
                break
        else:
            continue
        break
    else:
        start = 0
    chosen = lines[start : start + limit]
    if len(lines) > start + limit:
        chosen.append(f"... ({len(lines) - start - limit} more lines in the junit XML)")
    return "\n".join(chosen)


def library_warnings(log: str) -> list[dict]:
    """The warnings raised inside installed libraries, from the "warnings summary" of a pytest log.

    Deprecations are the next release's breaks: ``past_key_values`` renamed to ``cache`` warns today and goes later.
    Returns ``{"where": "tests/test_ch08_x.py: 12 warnings", "warning": "transformers/utils/generic.py:1036:
    FutureWarning: ..."}`` for each warning whose file lies in a ``site-packages`` folder.
    """
    text = ANSI.sub("", log)
    match = re.search(r"^=+ warnings summary =+$(.*?)^-- Docs:", text, re.MULTILINE | re.DOTALL)
    if not match:
        return []
    found = []
    for block in re.split(r"\n\s*\n", match.group(1).strip("\n")):
        lines = block.splitlines()
        if not lines:
            continue
        where = lines[0].strip()
        for line in lines[1:]:
            hit = re.search(r"site-packages/(\S+?:\d+: \w*Warning: .*)", line)
            if hit:
                found.append({"where": where, "warning": hit.group(1).strip()})
    return found



def load_results(folder: Path) -> tuple[list[dict], list[Case]]:
    """Every run record of ``folder`` (oldest first) and the merged cases of their junit XML files."""
    runs, results = [], []
    files = project_files()
    records = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.exists() else []
    for record in records:
        run = json.loads(record.read_text())
        log = record.with_suffix(".log")
        if log.exists():
            run["warnings"] = library_warnings(log.read_text(errors="replace"))
        runs.append(run)
        junit = record.with_suffix(".xml")
        if junit.exists():
            try:
                results.append(read_junit(junit, run["suite"], ROOT, files))
            except ElementTree.ParseError as error:
                run["problem"] = f"unreadable junit XML: {error}"
    return runs, merge_cases(results)

def with_pinned_outcomes(cases: list[Case], pinned: list[Case]) -> list[Case]:
    """Each case with the outcome the same test had in the pinned environment, where ``recheck`` ran it."""
    outcomes = {(case.suite, case.test): case.outcome for case in pinned}
    for case in cases:
        case.pinned_outcome = outcomes.get((case.suite, case.test), "")
    return cases
