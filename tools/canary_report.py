"""The drift canary's verdicts and report (tools/canary.py): each break judged (drift, expected after a version
bump, or broken with the pins too), then report.md for a reader, report.json for a program and the short summary
printed at the end of `make canary`."""

from dataclasses import asdict

from canary_results import Case, cell_diff
from canary_versions import CANARY_PACKAGES, normalize


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
    ``pinned_runs`` each run of ``recheck`` with the pinned .venv. Each section below adds its markdown lines and
    its lines of the short summary.
    """
    mark_expected(cases, state.get("changes", []))
    summary = summarize(cases)
    md = [f"# Canary report ({state.get('created', '?')})", ""]
    short: list[str] = []
    for section in (_versions_section(state), _install_section(state), _runs_section(runs, pinned_runs),
                     _warnings_section(runs), _results_section(summary), _notebooks_section(cases, summary),
                     _unit_tests_section(summary)):
        md += section[0]
        short += section[1]
    return "\n".join(md) + "\n", "\n".join(short), _report_data(state, cases, summary, runs, pinned_runs)


def _versions_section(state: dict) -> tuple[list[str], list[str]]:
    changes = state.get("changes", [])
    md, short = [
        "The book's tests in `.cache/canary-venv`: the newest releases of "
        + ", ".join(f"`{name}`" for name in CANARY_PACKAGES)
        + " that the package index serves, every other package as pinned in `requirements.txt`. The pinned "
        "environment (`.venv`, used by CI) was not changed.",
        "",
        "## Versions that differ from the pins",
        "",
    ], []
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
    return md, short


def _install_section(state: dict) -> tuple[list[str], list[str]]:
    md, short = ["", "## Install", ""], []
    conflicts = state.get("conflicts", [])
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
    return md, short


def _runs_section(runs: list[dict], pinned_runs: list[dict]) -> tuple[list[str], list[str]]:
    md, short = ["", "## Test runs", ""], []
    if not runs:
        return md + ["No test run yet."], short
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
    return md, short


def _warnings_section(runs: list[dict]) -> tuple[list[str], list[str]]:
    md, short = [], []
    warned = [item for run in runs for item in run.get("warnings", [])]
    if warned:
        md += ["", "## Warnings from the libraries (passing today; deprecations break a later release)", ""]
        for warning in dict.fromkeys(item["warning"] for item in warned):
            where = sorted({item["where"] for item in warned if item["warning"] == warning})
            md.append(f"- {warning} (in {'; '.join(where)})")
            short.append(f"library warning: {first_line(warning, 200)}")
    return md, short


def _results_section(summary: dict) -> tuple[list[str], list[str]]:
    md, short = ["", "## Results", "", "| suite | passed | failed | errors | skipped |", "|---|---|---|---|---|"], []
    for suite, count in summary["counts"].items():
        md.append(f"| {suite} | {count['passed']} | {count['failed']} | {count['error']} | {count['skipped']} |")
        short.append(
            f"{suite}: {count['passed']} passed, {count['failed']} failed, {count['error']} errors, "
            f"{count['skipped']} skipped"
        )
    return md, short


def _notebooks_section(cases: list[Case], summary: dict) -> tuple[list[str], list[str]]:
    md, short = ["", "## Broken notebooks", ""], []
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
    return md, short


def _unit_tests_section(summary: dict) -> tuple[list[str], list[str]]:
    md, short = ["", "## Broken unit tests", ""], []
    if not summary["broken_tests"]:
        md.append("None.")
    for case in summary["broken_tests"]:
        first = first_line(case.message)
        checked = f" ({verdict(case)})" if case.pinned_outcome else ""
        short.append(f"BROKEN {case.test}{checked}: {first}")
        md += [f"- `{case.test}` ({case.outcome}, {verdict(case)}): {first}", "", "```", cell_diff(case.details)]
        md += ["```", ""]
    return md, short


def _report_data(state: dict, cases: list[Case], summary: dict, runs: list[dict], pinned_runs: list[dict]) -> dict:
    """report.json: what the markdown says, for a program."""
    return {
        "created": state.get("created"),
        "packages": list(CANARY_PACKAGES),
        "newest": state.get("newest", {}),
        "changes": state.get("changes", []),
        "other_changes": state.get("other_changes", []),
        "install_ok": state.get("install_ok", False),
        "conflicts": state.get("conflicts", []),
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
