"""Drift canary: the book's tests against the newest releases of the libraries it teaches.

    python tools/canary.py                      # install, test, recheck what broke, report (what `make canary` does)
    python tools/canary.py install              # only build .cache/canary-venv and record its versions
    python tools/canary.py test --only unit     # run part of the tests in that environment, then update the report
    python tools/canary.py test --only notebooks/05_pipeline_by_hand.ipynb solutions/05_pipeline_by_hand_solutions.ipynb
    python tools/canary.py recheck              # run what broke again in the pinned .venv: drift or not?
    python tools/canary.py report               # rebuild the report from the results already there

``install`` builds a separate environment, ``.cache/canary-venv``, from ``requirements.txt`` with the pins of
:data:`CANARY_PACKAGES` replaced by the newest release the package index serves (asked of pip itself, so the
same index configuration applies), and every other pin kept: torch stays the pinned CPU build. When a newest
release will not install beside the pins, pip's conflict is recorded as a finding and the install is tried again
with those packages left for pip to choose. The pinned environment, ``.venv``, is only read (its versions, for
the comparison); CI keeps using it.

``test`` runs what ``make test-unit`` and ``make test-notebooks`` run, with the same flags (a test compares them
with the Makefile), in the canary environment's own ``pytest``, with the Makefile's environment variables: models,
caches, pip's downloads and Jupyter's files stay in the project's ``.cache`` (pytest's own ``tmp_path`` folders go
where ``make test`` puts them, and pytest removes them). Results are read from pytest's ``--junitxml`` files,
one per run, so the tests can be run in several parts (``--only``): the report merges every result file of the
current canary environment.

``recheck`` runs the broken unit tests and the notebooks with broken cells again with the pinned ``.venv`` (its
``pytest``, nothing installed): a break that happens with the pins too comes from the working tree or the
machine, not from the new releases, and the report says so for each one.

The report lists the versions that differ from the pins, install conflicts, and which unit tests, notebooks
and cells broke, with the failing cell's message and diff; it is printed in short and written in full to
``.cache/canary/report.md`` and ``.cache/canary/report.json``. The exit status is 0 when everything installed
and passed (or every break also happens with the pins), 1 when the canary found something, 2 when it could not
run.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path

# The orchestrator needs only the standard library and behind_pipeline.paths, importable from the checkout even
# by an interpreter that has not installed the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from behind_pipeline.paths import _CACHE_VARIABLES, CACHE_DIR  # noqa: E402
from behind_pipeline.paths import PROJECT_ROOT as ROOT  # noqa: E402

# The libraries whose drift the canary watches: everything the book teaches through, and the notebook tester.
CANARY_PACKAGES = ("transformers", "tokenizers", "datasets", "peft", "accelerate", "huggingface_hub", "nbval")

REQUIREMENTS = ROOT / "requirements.txt"
PINNED_VENV = ROOT / ".venv"
CANARY_VENV = ROOT / ".cache" / "canary-venv"
CANARY_DIR = ROOT / ".cache" / "canary"
RESULTS_DIR = CANARY_DIR / "results"  # one junit XML (and one JSON of how it ran) per test run
PINNED_RESULTS_DIR = RESULTS_DIR / "pinned"  # the same for what `recheck` ran again in the pinned .venv
# The flags of the Makefile's test-unit and test-notebooks (tests/test_canary.py compares them with the Makefile).
PARALLEL = ["-p", "no:xdist"]
NBVAL = ["--nbval-current-env", "--nbval-sanitize-with", "tests/sanitize.cfg"]
UNIT_TARGETS = ["tests"]
NOTEBOOK_TARGETS = ["notebooks", "solutions", "book"]
# Variables the Makefile exports besides the cache folders of behind_pipeline.paths.
MAKEFILE_SETTINGS = {"JUPYTER_PLATFORM_DIRS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
PIP = ["--disable-pip-version-check"]
INSTALL_TIMEOUT = 40 * 60  # seconds; pip can backtrack for a long time when releases conflict
# pip's progress lines, and its note on each package that a local extra index lacks: kept in the log, not echoed.
# (pip installs without --quiet: --quiet also drops "The conflict is caused by:" and the lines that explain it.)
UNSHOWN = re.compile(
    r"WARNING: Location '[^']*' is ignored|\s*(Requirement already satisfied|Collecting|Downloading|Using cached"
    r"|Obtaining|Preparing metadata|Building|Created wheel|Stored in directory|Installing build dependencies"
    r"|Getting requirements|Looking in indexes|Looking in links)"
)
# Colour codes in nbval's messages; pytest writes the escape character into junit XML as the text "#x1B".
ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*m")


def shown(path: Path) -> str:
    """A path as the reader sees it: relative to the project when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def normalize(name: str) -> str:
    """PEP 503 name: ``huggingface_hub`` and ``Huggingface-Hub`` are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------------- requirements


def requirement_name(line: str) -> str | None:
    """The package a requirements line asks for (``None`` for comments, blank lines and pip options)."""
    text = line.split("#", 1)[0].strip()
    if not text or text.startswith("-"):
        return None
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
    return normalize(match.group(0)) if match else None


def pinned_versions(requirements: str) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` line."""
    pins = {}
    for line in requirements.splitlines():
        name = requirement_name(line)
        match = re.search(r"==\s*([^\s;#]+)", line.split("#", 1)[0])
        if name and match:
            pins[name] = match.group(1)
    return pins


def rewrite_requirements(requirements: str, versions: dict[str, str | None]) -> str:
    """Requirements with the pin of each package in ``versions`` replaced, every other line kept as it is.

    ``versions`` maps a package name to the version to pin (``"5.24.0"`` -> ``name==5.24.0``) or to ``None``
    (``name`` alone: pip picks the newest release that fits the other pins). Names are compared normalized.
    """
    wanted = {normalize(name): version for name, version in versions.items()}
    lines = []
    for line in requirements.splitlines():
        name = requirement_name(line)
        if name in wanted:
            version = wanted[name]
            line = name if version is None else f"{name}=={version}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def newest_from_report(report: dict) -> dict[str, str]:
    """``{normalized name: version}`` from the JSON of ``pip install --dry-run --report``."""
    return {normalize(item["metadata"]["name"]): item["metadata"]["version"] for item in report.get("install", [])}


def pip_conflict(output: str) -> list[str]:
    """The lines in which pip explains why requirements cannot be installed together (empty when it says none)."""
    text = ANSI.sub("", output)
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.strip() == "The conflict is caused by:":
            for following in lines[index + 1 :]:
                if not following.strip():
                    break
                found.append(following.strip())
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("ERROR:") and (
            "conflicting dependencies" in stripped
            or "Could not find a version" in stripped
            or "No matching distribution" in stripped
            or "ResolutionImpossible" in stripped
        ):
            found.append(stripped)
    return list(dict.fromkeys(found))


def conflicting_packages(conflict: list[str], candidates) -> list[str]:
    """Which of ``candidates`` pip's conflict lines name (``transformers 5.24.0 depends on ...``)."""
    named = set()
    for line in conflict:
        for word in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", line):
            named.add(normalize(word))
    return [name for name in candidates if normalize(name) in named]


# ---------------------------------------------------------------------------------------------------- versions


def public_version(version: str | None) -> str | None:
    """``2.13.0+cpu`` -> ``2.13.0``: a local label (the CPU build of torch) still satisfies ``==2.13.0``."""
    return version.split("+", 1)[0] if version else version


def version_changes(pins: dict[str, str], installed: dict[str, str]) -> list[dict]:
    """Every pinned package whose installed version differs from its pin (or that is missing)."""
    changes = []
    for name, pinned in pins.items():
        got = installed.get(name)
        if public_version(got) != public_version(pinned):
            changes.append({"package": name, "pinned": pinned, "canary": got})
    return changes


def other_changes(pins: dict[str, str], pinned_env: dict[str, str], canary_env: dict[str, str]) -> list[dict]:
    """Packages not pinned in requirements.txt (dependencies of dependencies) whose version differs from .venv."""
    changes = []
    for name in sorted(set(pinned_env) | set(canary_env)):
        if name in pins or name in {"behind-pipeline", "pip", "setuptools", "wheel"}:
            continue
        if pinned_env.get(name) != canary_env.get(name):
            changes.append({"package": name, "pinned_env": pinned_env.get(name), "canary": canary_env.get(name)})
    return changes


# ---------------------------------------------------------------------------------------------------- results


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


# ---------------------------------------------------------------------------------------------------- report


def only_versions_differ(details: str, changes: list[dict]) -> bool:
    """True when a failure's diff says nothing but that the canary's versions differ from the pins.

    Every chapter's setup cell prints the library versions, so it fails in the canary by design. pytest shows the
    difference as ``- ...5.24.0...`` / ``+ ...5.23.0...`` lines: with each canary version written as its pin, the
    two sides must be equal, line for line.
    """
    pairs = [(c["canary"], c["pinned"]) for c in changes if c.get("canary") and c.get("pinned")]
    lines = [line.strip() for line in details.splitlines()]
    minus = [line[2:] for line in lines if line.startswith("- ")]
    plus = [line[2:] for line in lines if line.startswith("+ ")]
    if not pairs or not minus or len(minus) != len(plus):
        return False

    def as_pinned(text: str) -> str:
        for canary_version, pinned_version in pairs:
            text = text.replace(canary_version, pinned_version)
        return text

    return sorted(map(as_pinned, minus)) == sorted(map(as_pinned, plus)) and minus != plus


def mark_expected(cases: list[Case], changes: list[dict]) -> list[Case]:
    """Mark the notebook cells whose only difference is the printed versions as expected."""
    for case in cases:
        if case.suite == "notebooks" and case.outcome == "failed" and only_versions_differ(case.details, changes):
            case.expected = "only the printed library versions differ"
    return cases


def verdict(case: Case) -> str:
    """Whether a break is drift: ``recheck`` ran the same test in the pinned environment."""
    if case.pinned_outcome == "passed":
        return "passes with the pins: drift"
    if case.pinned_outcome in {"failed", "error"}:
        return "fails with the pins too: not drift"
    if case.pinned_outcome == "skipped":
        return "skipped with the pins"
    return "not rechecked with the pins"


def is_drift(case: Case) -> bool:
    """A break not shown to happen with the pins as well (unchecked breaks count, to be safe), and not expected."""
    broken = case.outcome in {"failed", "error"} and not case.expected
    return broken and case.pinned_outcome not in {"failed", "error"}


def summarize(cases: list[Case]) -> dict:
    """Counts per suite, broken unit tests, and broken notebooks with their cells."""
    counts: dict[str, dict[str, int]] = {}
    for case in cases:
        suite = counts.setdefault(case.suite, {"passed": 0, "failed": 0, "error": 0, "skipped": 0})
        suite[case.outcome] += 1
    broken = [case for case in cases if case.outcome in {"failed", "error"}]
    notebooks: dict[str, list[Case]] = {}
    for case in broken:
        if case.suite == "notebooks":
            notebooks.setdefault(case.notebook or case.test, []).append(case)
    return {
        "counts": counts,
        "broken_tests": [case for case in broken if case.suite != "notebooks"],
        "broken_notebooks": notebooks,
    }


def build_report(
    state: dict, cases: list[Case], runs: list[dict], pinned_runs: list[dict] = ()
) -> tuple[str, str, dict]:
    """(full markdown report, short summary for the terminal, JSON-ready dict) from what the canary found.

    ``state`` is what ``install`` recorded (versions, changes, conflicts); ``runs`` how each test run ended, and
    ``pinned_runs`` each run of ``recheck`` with the pinned .venv.
    """
    changes = state.get("changes", [])
    mark_expected(cases, changes)
    summary = summarize(cases)
    md = [f"# Canary report ({state.get('created', '?')})", ""]
    short = []
    md += [
        "The book's tests in `.cache/canary-venv`: the newest releases of "
        + ", ".join(f"`{name}`" for name in CANARY_PACKAGES)
        + " that the package index serves, every other package as pinned in `requirements.txt`. The pinned "
        "environment (`.venv`, used by CI) was not changed.",
        "",
        "## Versions that differ from the pins",
        "",
    ]
    if changes:
        md += ["| package | pinned | canary |", "|---|---|---|"]
        md += [f"| {c['package']} | {c['pinned']} | {c['canary'] or 'not installed'} |" for c in changes]
        short.append("versions that differ from the pins: " + ", ".join(_change(c) for c in changes))
    else:
        md.append("None: every pinned package is at its pin.")
        short.append("versions that differ from the pins: none")
    same = [name for name in CANARY_PACKAGES if normalize(name) not in {c["package"] for c in changes}]
    newest = state.get("newest", {})
    if same:
        listed = ", ".join(f"{name} {newest.get(normalize(name), '?')}" for name in same)
        md += ["", f"Newest release already pinned: {listed}."]
    others = state.get("other_changes", [])
    if others:
        md += ["", "Dependencies not pinned in `requirements.txt` that differ from `.venv`:", ""]
        md += ["| package | .venv | canary |", "|---|---|---|"]
        md += [f"| {c['package']} | {c['pinned_env'] or '-'} | {c['canary'] or '-'} |" for c in others]
    md += ["", "## Install", ""]
    conflicts = state.get("conflicts", [])
    if conflicts:
        for conflict in conflicts:
            md += [f"- {conflict['what']}:", "", "```", *conflict["lines"], "```", ""]
            short.append(f"install conflict: {conflict['what']}")
    if state.get("install_ok"):
        md.append("Installed" + (" (after the conflicts above)." if conflicts else " without conflicts."))
    else:
        md.append("**The canary environment could not be installed**: " + state.get("install_error", "see above"))
        short.append("install failed: " + state.get("install_error", ""))
    if state.get("pip_check"):
        md += ["", "`pip check` reports:", "", "```", *state["pip_check"], "```"]
        short.append(f"pip check: {len(state['pip_check'])} problem(s)")
    md += ["", "## Test runs", ""]
    if runs:
        md += ["| run | what | exit status | seconds |", "|---|---|---|---|"]
        for run in runs:
            md.append(f"| {run['label']} | {' '.join(run['targets'])} | {run['returncode']} | {run['seconds']:.0f} |")
        for run in pinned_runs:
            label, what = f"recheck with the pins: {run['label']}", " ".join(run["targets"])
            md.append(f"| {label} | {what} | {run['returncode']} | {run['seconds']:.0f} |")
        trees = {run.get("tree") for run in runs} | {run.get("tree") for run in pinned_runs}
        if pinned_runs and len(trees) > 1:
            md += ["", "**The working tree changed between these runs** (git shows other changes): a break that"
                   " passes with the pins may have been fixed in the tree meanwhile, not caused by a release. Run"
                   " the part again (`test --only ...`) to be sure."]  # fmt: skip
            short.append("note: the working tree changed between the runs; rerun a part before trusting a verdict")
        for run in runs:
            if run.get("problem"):
                md += ["", f"Run `{run['label']}` left no usable results: {run['problem']}", "", "```"]
                md += run.get("output_tail", []) + ["```"]
                short.append(f"run {run['label']}: {run['problem']}")
    else:
        md.append("No test run yet.")
    warned = [item for run in runs for item in run.get("warnings", [])]
    if warned:
        md += ["", "## Warnings from the libraries (passing today; deprecations break a later release)", ""]
        for warning in dict.fromkeys(item["warning"] for item in warned):
            where = sorted({item["where"] for item in warned if item["warning"] == warning})
            md.append(f"- {warning} (in {'; '.join(where)})")
            short.append(f"library warning: {first_line(warning, 200)}")
    md += ["", "## Results", "", "| suite | passed | failed | errors | skipped |", "|---|---|---|---|---|"]
    for suite, count in summary["counts"].items():
        md.append(f"| {suite} | {count['passed']} | {count['failed']} | {count['error']} | {count['skipped']} |")
        short.append(
            f"{suite}: {count['passed']} passed, {count['failed']} failed, {count['error']} errors, "
            f"{count['skipped']} skipped"
        )
    md += ["", "## Broken notebooks", ""]
    expected = [case for case in cases if case.expected]
    if expected:
        listed = ", ".join(f"{case.notebook} cell {case.cell}" for case in expected)
        md += [f"Expected (only the printed library versions differ; `make execute` refreshes them): {listed}.", ""]
        short.append(f"{len(expected)} cell(s) differ only by the printed library versions (expected)")
    shown = {
        notebook: [case for case in broken if not case.expected]
        for notebook, broken in summary["broken_notebooks"].items()
    }
    shown = {notebook: broken for notebook, broken in shown.items() if broken}
    if not shown:
        md.append("None." if not expected else "No other.")
    for notebook, broken in shown.items():
        cells = ", ".join(
            (f"cell {case.cell}" if case.cell is not None else case.test)
            + (f" ({verdict(case)})" if case.pinned_outcome else "")
            for case in broken
        )
        short.append(f"BROKEN {notebook}: {cells}")
        md += [f"### {notebook}", ""]
        for case in broken:
            where = f"Cell {case.cell} (among code cells)" if case.cell is not None else case.test
            md += [f"**{where}**: {case.outcome} ({verdict(case)}): {first_line(case.message)}", ""]
            if case.cell_source:
                md += ["Cell starts with:", "", "```python", case.cell_source, "```", ""]
            md += ["```", cell_diff(case.details), "```", ""]
    md += ["", "## Broken unit tests", ""]
    if not summary["broken_tests"]:
        md.append("None.")
    for case in summary["broken_tests"]:
        first = first_line(case.message)
        checked = f" ({verdict(case)})" if case.pinned_outcome else ""
        short.append(f"BROKEN {case.test}{checked}: {first}")
        md += [f"- `{case.test}` ({case.outcome}, {verdict(case)}): {first}", "", "```", cell_diff(case.details)]
        md += ["```", ""]
    data = {
        "created": state.get("created"),
        "packages": list(CANARY_PACKAGES),
        "newest": newest,
        "changes": changes,
        "other_changes": others,
        "install_ok": state.get("install_ok", False),
        "conflicts": conflicts,
        "pip_check": state.get("pip_check", []),
        "runs": runs,
        "pinned_runs": list(pinned_runs),
        "library_warnings": [item for run in runs for item in run.get("warnings", [])],
        "counts": summary["counts"],
        "broken_notebooks": {
            notebook: [
                {
                    "cell": c.cell,
                    "test": c.test,
                    "outcome": c.outcome,
                    "pinned_outcome": c.pinned_outcome,
                    "expected": c.expected,
                    "message": first_line(c.message),
                }
                for c in broken
            ]
            for notebook, broken in summary["broken_notebooks"].items()
        },
        "broken_tests": [
            {"test": c.test, "outcome": c.outcome, "pinned_outcome": c.pinned_outcome, "message": first_line(c.message)}
            for c in summary["broken_tests"]
        ],
        "cases": [asdict(case) for case in cases if case.outcome in {"failed", "error"}],
        "drift": sum(is_drift(case) for case in cases),
    }
    return "\n".join(md) + "\n", "\n".join(short), data


def first_line(message: str, limit: int = 160) -> str:
    """The first non-blank line of a failure message, cut at ``limit`` characters."""
    line = next((line.strip() for line in message.splitlines() if line.strip()), "(no message)")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _change(change: dict) -> str:
    return f"{change['package']} {change['pinned']} -> {change['canary'] or 'not installed'}"


def has_findings(data: dict) -> bool:
    """Anything a maintainer has to look at: a version conflict, a break that is not shown to happen with the pins
    too, a run without results."""
    broken = data["drift"] > 0
    unusable = any(run.get("problem") for run in data["runs"])
    return bool(data["conflicts"] or data["pip_check"] or broken or unusable or not data["install_ok"])


# ---------------------------------------------------------------------------------------------------- running


def canary_environment(venv: Path = CANARY_VENV, root: Path = ROOT) -> dict[str, str]:
    """The process environment of the canary's tests: the Makefile's variables, the canary venv first on PATH."""
    env = dict(os.environ)
    for name, folder in _CACHE_VARIABLES.items():
        env[name] = str(root / ".cache" / folder.relative_to(CACHE_DIR))
    env.update(MAKEFILE_SETTINGS)
    # TMPDIR stays as `make test` has it: pytest's tmp_path folders go to the system's temporary folder (and are
    # removed by pytest), and a test of chapter 3 checks that a folder outside the project is printed unchanged.
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    return env


def run_logged(command: list[str], log: Path, env: dict, timeout: float | None = None) -> tuple[int, list[str]]:
    """Run ``command`` in the project root, echo its output and keep it in ``log``; (exit status, last lines)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    start = time.time()
    with open(log, "w") as sink:
        sink.write("$ " + " ".join(command) + "\n")
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert process.stdout is not None
        for line in process.stdout:
            if not UNSHOWN.match(line):
                sys.stdout.write(line)
            sink.write(line)
            tail = (tail + [line.rstrip("\n")])[-60:]
            if timeout and time.time() - start > timeout:
                process.kill()
                tail.append(f"(stopped by the canary after {timeout:.0f} s)")
                break
        returncode = process.wait()
    return returncode, tail


def pip_list(python: Path) -> dict[str, str]:
    """``{normalized name: version}`` installed in the environment of ``python`` (read only)."""
    if not python.exists():
        return {}
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", *PIP, "--format=json"], capture_output=True, text=True, check=True
    )
    return {normalize(item["name"]): item["version"] for item in json.loads(listed.stdout)}


def install(args) -> int:
    """Build the canary environment; record the newest releases, what was installed, and any conflict."""
    env = canary_environment()
    CANARY_DIR.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(RESULTS_DIR, ignore_errors=True)  # results of an older canary environment no longer apply
    requirements = REQUIREMENTS.read_text()
    pins = pinned_versions(requirements)
    state: dict = {"created": _now(), "pins": pins, "conflicts": [], "install_ok": False}
    if CANARY_VENV.exists() and not args.reuse:
        shutil.rmtree(CANARY_VENV)
    if not CANARY_VENV.exists():
        print(f"canary: creating {shown(CANARY_VENV)} with {args.python}", flush=True)
        subprocess.run([args.python, "-m", "venv", str(CANARY_VENV)], check=True, env=env)
    python = CANARY_VENV / "bin" / "python"

    # The newest release of each watched package, asked of pip (same index, same Python, no pre-releases).
    report_file = CANARY_DIR / "newest.json"
    code, tail = run_logged(
        [str(python), "-m", "pip", "install", *PIP, "--quiet", "--dry-run", "--no-deps", "--ignore-installed"]
        + ["--report", str(report_file), *CANARY_PACKAGES],
        CANARY_DIR / "logs" / "newest.log",
        env,
    )
    if code != 0:
        state["install_error"] = "pip could not find the newest releases: " + " / ".join(tail[-5:])
        return _save_state(state)
    newest = newest_from_report(json.loads(report_file.read_text()))
    newest.update({normalize(name): version for name, version in (args.release or [])})
    state["newest"] = newest
    print("canary: newest releases: " + ", ".join(f"{n} {v}" for n, v in newest.items()), flush=True)

    wanted: dict[str, str | None] = {name: newest.get(normalize(name)) for name in CANARY_PACKAGES}
    for attempt in range(len(CANARY_PACKAGES) + 1):
        text = rewrite_requirements(requirements, wanted)
        canary_requirements = CANARY_DIR / "requirements-canary.txt"
        canary_requirements.write_text(text)
        print(f"canary: pip install -r {shown(canary_requirements)} (attempt {attempt + 1})", flush=True)
        code, tail = run_logged(
            [str(python), "-m", "pip", "install", *PIP, "-r", str(canary_requirements)],
            CANARY_DIR / "logs" / f"install-{attempt + 1}.log",
            env,
            timeout=INSTALL_TIMEOUT,
        )
        if code == 0:
            state["install_ok"] = True
            break
        log = (CANARY_DIR / "logs" / f"install-{attempt + 1}.log").read_text()
        lines = pip_conflict(log) or tail[-15:]
        pinned_now = [name for name, version in wanted.items() if version is not None]
        culprits = conflicting_packages(lines, pinned_now)
        what = ", ".join(f"{name}=={wanted[name]}" for name in culprits) or "the canary requirements"
        state["conflicts"].append({"what": f"{what} would not install beside the pins", "lines": lines})
        if not culprits:
            state["install_error"] = "pip failed for a reason that names none of the watched packages"
            break
        for name in culprits:
            wanted[name] = None  # let pip choose the newest release that fits the other pins
    if not state["install_ok"]:
        state.setdefault("install_error", "pip could not resolve the requirements")
        return _save_state(state)
    code, tail = run_logged(
        [str(python), "-m", "pip", "install", *PIP, "--quiet", "--no-deps", "--no-build-isolation", "-e", "."],
        CANARY_DIR / "logs" / "install-project.log",
        env,
    )
    if code != 0:
        state["install_ok"] = False
        state["install_error"] = "the project itself would not install: " + " / ".join(tail[-5:])
        return _save_state(state)
    installed = pip_list(python)
    check = subprocess.run([str(python), "-m", "pip", "check", *PIP], capture_output=True, text=True, env=env)
    state["pip_check"] = [] if check.returncode == 0 else check.stdout.strip().splitlines()
    state["installed"] = installed
    state["changes"] = version_changes(pins, installed)
    state["other_changes"] = other_changes(pins, pip_list(PINNED_VENV / "bin" / "python"), installed)
    return _save_state(state)


def _save_state(state: dict) -> int:
    CANARY_DIR.mkdir(parents=True, exist_ok=True)
    (CANARY_DIR / "versions.json").write_text(json.dumps(state, indent=2) + "\n")
    return 0 if state.get("install_ok") else 2


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def split_targets(only: list[str] | None) -> tuple[list[str], list[str]]:
    """(unit test targets, notebook targets) of ``--only``: ``unit``, ``notebooks``, test files or notebooks."""
    if not only:
        return list(UNIT_TARGETS), list(NOTEBOOK_TARGETS)
    unit, notebooks = [], []
    for item in only:
        if item == "unit":
            unit += UNIT_TARGETS
        elif item in {"notebooks", "nbval"}:
            notebooks += NOTEBOOK_TARGETS
        elif item.split("::")[0].endswith(".ipynb") or item.rstrip("/") in NOTEBOOK_TARGETS:
            notebooks.append(item)
        else:
            unit.append(item)
    return unit, notebooks


def pytest_command(venv: Path, suite: str, targets: list[str], junit: Path) -> list[str]:
    """The Makefile's test-unit / test-notebooks command line, in the canary venv, writing a junit XML."""
    flags = PARALLEL if suite == "unit" else PARALLEL + NBVAL + ["--nbval"]
    return [str(venv / "bin" / "pytest"), *flags, *targets, f"--junitxml={junit}"]


def tree_state(root: Path = ROOT) -> str:
    """A fingerprint of the working tree (commit, changes, untracked files), read with git; "" outside git.

    ``recheck`` compares it with the canary run's: when the tree changed in between (someone re-executed a
    notebook), a break that passes with the pins may have been fixed in the tree, not caused by a release.
    """
    digest = hashlib.sha1()
    for command in (["rev-parse", "HEAD"], ["diff", "HEAD"], ["ls-files", "--others", "--exclude-standard"]):
        done = subprocess.run(["git", *command], cwd=root, capture_output=True)
        if done.returncode != 0:
            return ""
        digest.update(done.stdout)
    return digest.hexdigest()[:12]


def run_suites(venv: Path, folder: Path, unit: list[str], notebooks: list[str]) -> None:
    """Run the unit tests and notebooks given with ``venv``'s pytest; one junit XML and one run record per suite."""
    env = canary_environment(venv)
    folder.mkdir(parents=True, exist_ok=True)
    for suite, targets in (("unit", unit), ("notebooks", notebooks)):
        if not targets:
            continue
        label = run_label(suite, targets)
        junit = folder / f"{label}.xml"
        junit.unlink(missing_ok=True)
        print(f"canary: {suite} with {shown(venv)}: {' '.join(targets)}", flush=True)
        tree = tree_state()
        start = time.time()
        code, tail = run_logged(pytest_command(venv, suite, targets, junit), folder / f"{label}.log", env)
        seconds = round(time.time() - start, 1)
        run = {"label": label, "suite": suite, "targets": targets, "returncode": code, "seconds": seconds}
        run["tree"] = tree
        if not junit.exists():
            run["problem"] = f"pytest exited with status {code} and wrote no junit XML"
            run["output_tail"] = tail[-25:]
        elif code not in (0, 1):
            # 2: interrupted or collection errors, 3: internal error, 4: usage error (a flag nbval dropped?)
            run["problem"] = f"pytest exited with status {code} (collection or usage error; see the log)"
            run["output_tail"] = tail[-25:]
        (folder / f"{label}.json").write_text(json.dumps(run, indent=2) + "\n")


def run_tests(args) -> int:
    """Run the selected tests in the canary environment, then update the report."""
    if not (CANARY_DIR / "versions.json").exists() or not (CANARY_VENV / "bin" / "pytest").exists():
        print("canary: no canary environment yet: run `python tools/canary.py install` first", file=sys.stderr)
        return 2
    if not args.only:
        shutil.rmtree(RESULTS_DIR, ignore_errors=True)  # a full run replaces every part run before it
    run_suites(CANARY_VENV, RESULTS_DIR, *split_targets(args.only))
    return report()


def recheck_targets(cases: list[Case], only: list[str] | None = None) -> tuple[list[str], list[str]]:
    """What to run with the pins to tell drift from breakage: broken unit tests by id, notebooks whole (a cell
    alone would run without the cells before it); expected breaks are left out. ``only`` keeps the targets whose
    file it names."""
    unit, notebooks = [], []
    for case in cases:
        if case.outcome not in {"failed", "error"} or case.expected:
            continue
        if case.suite == "notebooks":
            target = case.notebook or case.test.split("::")[0]
            if target not in notebooks:
                notebooks.append(target)
        elif case.test not in unit:
            unit.append(case.test)
    if only:
        unit = [test for test in unit if test.split("::")[0] in only or test in only]
        notebooks = [notebook for notebook in notebooks if notebook in only]
    return unit, notebooks


def recheck(args) -> int:
    """Run what broke in the canary again in the pinned .venv (read only), so the report tells drift apart."""
    if not (PINNED_VENV / "bin" / "pytest").exists():
        print("canary: no pinned environment (.venv): run `make install` first", file=sys.stderr)
        return 2
    _runs, cases = load_results(RESULTS_DIR)
    mark_expected(cases, current_state().get("changes", []))
    unit, notebooks = recheck_targets(cases, args.only)
    if not unit and not notebooks:
        print("canary: nothing broke in the canary environment; nothing to recheck")
    else:
        run_suites(PINNED_VENV, PINNED_RESULTS_DIR, unit, notebooks)
    return report()


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


def run_label(suite: str, targets: list[str]) -> str:
    """A file name for one run's results: the whole suite, or a part named after its first target."""
    if targets == (UNIT_TARGETS if suite == "unit" else NOTEBOOK_TARGETS):
        return f"{suite}-all"
    digest = hashlib.sha1("\n".join(targets).encode()).hexdigest()[:8]
    first = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(targets[0].split("::")[0]).stem)[:40]
    return f"{suite}-{first}-{len(targets)}-{digest}"


def current_state() -> dict:
    """What ``install`` recorded, with the versions compared again (a newer rule applies to an older install)."""
    state_file = CANARY_DIR / "versions.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if "installed" in state:
        state["changes"] = version_changes(state["pins"], state["installed"])
    return state


def report() -> int:
    """Merge every result of the current canary environment into report.md / report.json and print a summary."""
    state = current_state()
    runs, cases = load_results(RESULTS_DIR)
    pinned_runs, pinned = load_results(PINNED_RESULTS_DIR)
    markdown, short, data = build_report(state, with_pinned_outcomes(cases, pinned), runs, pinned_runs)
    (CANARY_DIR / "report.md").write_text(markdown)
    (CANARY_DIR / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    print("\n== canary summary ==\n" + short)
    print(f"full report: {shown(CANARY_DIR / 'report.md')} (and report.json)")
    return 1 if has_findings(data) else 0


def release_option(text: str) -> tuple[str, str]:
    """``--release transformers==5.24.0``: try a given release instead of the newest."""
    name, _, version = text.partition("==")
    if not name or not version:
        raise argparse.ArgumentTypeError("expected NAME==VERSION")
    return name, version


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", nargs="?", default="all", choices=["all", "install", "test", "recheck", "report"])
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="TARGET",
        help="test: 'unit', 'notebooks', test files or notebooks (one part); recheck: the files to run again",
    )
    parser.add_argument(
        "--python",
        default=getattr(sys, "_base_executable", sys.executable),
        help="interpreter of the canary venv (default: the base interpreter of the one running this tool)",
    )
    parser.add_argument("--reuse", action="store_true", help="install into the existing canary venv")
    parser.add_argument(
        "--release",
        type=release_option,
        action="append",
        metavar="NAME==VERSION",
        help="install this release of a watched package instead of the newest (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.step == "install":
        return install(args)
    if args.step == "test":
        return run_tests(args)
    if args.step == "recheck":
        return recheck(args)
    if args.step == "report":
        return report()
    if install(args) != 0:
        return max(report(), 1)
    args.only = None
    if run_tests(args) == 0:
        return 0
    return recheck(args)  # something broke: does it break with the pins too?


if __name__ == "__main__":
    sys.exit(main())
