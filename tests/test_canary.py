"""`make canary` (tools/canary.py), without the network: the requirement rewriting, pip's conflicts, junit
results read back to notebooks and cells, the report, and the commands and environment it shares with the Makefile.
"""

import json
import os
import re
from pathlib import Path

import canary
import canary_report
import canary_results
import canary_versions
from canary_report import build_report
from canary_results import Case, with_pinned_outcomes

from behind_pipeline.paths import PROJECT_ROOT as ROOT  # the one definition of the project root

WATCHED = {normalized: canary_versions.normalize(normalized) for normalized in canary_versions.CANARY_PACKAGES}


# ------------------------------------------------------------------------------------------------ requirements

NEWEST = {
    "transformers": "9.1.0",
    "tokenizers": "0.99.0",
    "datasets": "9.0.1",
    "peft": "0.99.2",
    "accelerate": "9.0.0",
    "huggingface-hub": "9.2.0",  # spelled as pip's report spells it; requirements.txt says huggingface_hub
    "nbval": "0.99.0",
}


def test_rewrite_pins_the_seven_watched_packages_to_the_newest_and_keeps_every_other_line():
    text = canary.REQUIREMENTS.read_text()
    rewritten = canary_versions.rewrite_requirements(text, NEWEST)
    before, after = canary_versions.pinned_versions(text), canary_versions.pinned_versions(rewritten)
    assert set(before) == set(after)
    for name, pinned in before.items():
        expected = NEWEST[name] if name in NEWEST else pinned
        assert after[name] == expected, name
    assert after["torch"] == "2.13.0"  # the CPU build on local disk; any other spec pulls CUDA wheels
    # Comments and blank lines stay where they were: only the seven lines changed.
    changed = [(old, new) for old, new in zip(text.splitlines(), rewritten.splitlines(), strict=True) if old != new]
    assert len(changed) == len(canary_versions.CANARY_PACKAGES)
    assert {canary_versions.requirement_name(old) for old, _ in changed} == set(WATCHED.values())


def test_rewrite_matches_whole_normalized_names_only():
    text = "# tokenizers==1 in a comment stays\nHuggingFace_Hub==1.0\nnbval-extra==2.0\nnbval==0.1  # tester\n-e .\n"
    wanted = {"huggingface-hub": "3.0", "nbval": "0.2", "tokenizers": "5"}
    rewritten = canary_versions.rewrite_requirements(text, wanted)
    assert rewritten.splitlines() == [
        "# tokenizers==1 in a comment stays",
        "huggingface-hub==3.0",
        "nbval-extra==2.0",
        "nbval==0.2",
        "-e .",
    ]


def test_rewrite_to_none_lets_pip_choose_and_leaves_no_pin():
    rewritten = canary_versions.rewrite_requirements("transformers==5.23.0\nnumpy==2.4.6\n", {"transformers": None})
    assert rewritten == "transformers\nnumpy==2.4.6\n"
    assert canary_versions.pinned_versions(rewritten) == {"numpy": "2.4.6"}


def test_newest_versions_come_from_pips_json_report():
    report = {
        "version": "1",
        "install": [
            {"metadata": {"name": "huggingface_hub", "version": "2.5.0"}, "requested": True},
            {"metadata": {"name": "Transformers", "version": "5.24.0"}, "requested": True},
        ],
    }
    assert canary_versions.newest_from_report(report) == {"huggingface-hub": "2.5.0", "transformers": "5.24.0"}


# ------------------------------------------------------------------------------------------------ conflicts

PIP_CONFLICT = """\
Collecting transformers==5.30.0
\x1b[31mERROR: Cannot install -r req.txt (line 3) and transformers==5.30.0 because these package versions have \
conflicting dependencies.\x1b[0m

The conflict is caused by:
    The user requested numpy==2.4.6
    transformers 5.30.0 depends on numpy>=2.5

To fix this you could try to:
1. loosen the range of package versions you've specified

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""


def test_a_pip_conflict_is_read_as_a_finding_naming_the_release_that_conflicts():
    lines = canary_versions.pip_conflict(PIP_CONFLICT)
    assert "The user requested numpy==2.4.6" in lines
    assert "transformers 5.30.0 depends on numpy>=2.5" in lines
    assert not any("\x1b" in line for line in lines)
    assert not any("loosen" in line for line in lines)  # pip's generic advice is not a finding
    watched = list(canary_versions.CANARY_PACKAGES)
    assert canary_versions.conflicting_packages(lines, watched) == ["transformers"]
    assert canary_versions.pip_conflict("Successfully installed transformers-5.24.0\n") == []


def test_a_real_pip_conflict_names_both_releases():
    # pip 23.2.1's own words (no --quiet: it would drop the "caused by" lines), for transformers 5.24.0 beside a
    # tokenizers pin it does not accept; progress lines are left out of the terminal, not of the log.
    output = (
        "Requirement already satisfied: regex>=2025.10.22 in ./.cache/canary-venv/lib/python3.11/site-packages\n"
        "ERROR: Cannot install tokenizers==0.20.0 and transformers==5.24.0 because these package versions have "
        "conflicting dependencies.\n\nThe conflict is caused by:\n    The user requested tokenizers==0.20.0\n"
        "    transformers 5.24.0 depends on tokenizers<0.24.0 and >=0.23.1\n\nTo fix this you could try to:\n"
    )
    lines = canary_versions.pip_conflict(output)
    assert lines[:2] == ["The user requested tokenizers==0.20.0",
                         "transformers 5.24.0 depends on tokenizers<0.24.0 and >=0.23.1"]  # fmt: skip
    watched = list(canary_versions.CANARY_PACKAGES)
    assert canary_versions.conflicting_packages(lines, watched) == ["transformers", "tokenizers"]
    assert canary.UNSHOWN.match(output.splitlines()[0])
    assert not canary.UNSHOWN.match("ERROR: Cannot install tokenizers==0.20.0")
    assert not canary.UNSHOWN.match("tests/test_ch01_tokenizer.py ....")


def test_a_release_pip_cannot_find_is_a_finding_too():
    output = "ERROR: Could not find a version that satisfies the requirement peft==0.99 (from versions: 0.21.2)\n"
    lines = canary_versions.pip_conflict(output)
    assert len(lines) == 1
    assert canary_versions.conflicting_packages(lines, ["transformers", "peft"]) == ["peft"]


# ------------------------------------------------------------------------------------------------ versions


def test_version_changes_list_each_pin_the_canary_moved_and_nothing_else():
    pins = {"transformers": "5.23.0", "tokenizers": "0.23.3", "torch": "2.13.0", "peft": "0.21.2"}
    # torch's CPU build calls itself 2.13.0+cpu: the same release as the pin, not a change.
    installed = {"transformers": "5.24.0", "tokenizers": "0.23.3", "torch": "2.13.0+cpu", "regex": "2026.1.1"}
    assert canary_versions.version_changes(pins, installed) == [
        {"package": "transformers", "pinned": "5.23.0", "canary": "5.24.0"},
        {"package": "peft", "pinned": "0.21.2", "canary": None},
    ]
    pinned_env = {"transformers": "5.23.0", "regex": "2025.9.1", "hf-xet": "1.0", "pip": "23.2.1"}
    canary_env = {"transformers": "5.24.0", "regex": "2026.1.1", "hf-xet": "1.0", "pip": "25.0"}
    assert canary_versions.other_changes(pins, pinned_env, canary_env) == [
        {"package": "regex", "pinned_env": "2025.9.1", "canary": "2026.1.1"}
    ]


# ------------------------------------------------------------------------------------------------ junit results

CELL_DIFF = (
    "\x1b[91mNotebook cell execution failed\x1b[0m\n\x1b[94mCell 2: Cell outputs differ\n\nInput:\n\x1b[0m"
    "print(probs)\n\n\x1b[94mTraceback:\x1b[0m\nmismatch 'stdout'\n\n"
    " assert reference_output == test_output failed:\n\n"
    "  'probs: 0.9130' == 'probs: 0.9128'\n  - probs: 0.9128\n  + probs: 0.9130\n"
)
# pytest writes characters XML cannot hold, like nbval's colour escapes, as text: "\x1b" becomes "#x1B".
JUNIT = f"""<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="2" skipped="1" tests="7" time="9.1">
<testcase classname="notebooks.05_x.y.ipynb" name="Cell 0" time="1.0" />
<testcase classname="notebooks.05_x.y.ipynb" name="Cell 1" time="1.0" />
<testcase classname="notebooks.05_x.y.ipynb" name="Cell 2" time="1.0">
  <failure message="{CELL_DIFF.replace(chr(10), '&#10;').replace(chr(27), '#x1B')}">{
    CELL_DIFF.replace(chr(27), '#x1B')}</failure>
</testcase>
<testcase classname="solutions.05_x.y_solutions.ipynb" name="Cell 0" time="1.0">
  <skipped type="pytest.skip" message="nbval-skip">skipped</skipped>
</testcase>
<testcase classname="tests.test_ch05_x" name="test_parity[a.b]" time="0.1" />
<testcase classname="tests.test_ch05_x.TestChecker" name="test_rejects_wrong" time="0.1">
  <failure message="AssertionError: checker accepted a wrong answer&#10;assert False">long traceback</failure>
</testcase>
<testcase classname="tests.test_ch06_y" name="test_module" time="0.0">
  <error message="collection failure">ImportError: cannot import name 'x' from 'transformers'</error>
</testcase>
</testsuite></testsuites>
"""


def fake_project(tmp_path: Path) -> Path:
    """A project folder with the files the junit XML names: a notebook whose code cells sit between markdown."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "solutions").mkdir()
    (tmp_path / "tests").mkdir()
    cells = [
        {"cell_type": "markdown", "source": "# 5. Title", "metadata": {}},
        {"cell_type": "code", "source": "setup_chapter(seed=0)", "metadata": {}, "outputs": []},
        {"cell_type": "markdown", "source": "prose", "metadata": {}},
        {"cell_type": "code", "source": ["logits = model(x)\n", "logits"], "metadata": {}, "outputs": []},
        {"cell_type": "markdown", "source": "more prose", "metadata": {}},
        {"cell_type": "code", "source": ["probs = softmax(logits)\n", "print(probs)"], "metadata": {}, "outputs": []},
    ]
    notebook = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "notebooks" / "05_x.y.ipynb").write_text(json.dumps(notebook))
    (tmp_path / "solutions" / "05_x.y_solutions.ipynb").write_text(json.dumps(notebook))
    for name in ("test_ch05_x.py", "test_ch06_y.py"):
        (tmp_path / "tests" / name).write_text("")
    (tmp_path / "results.xml").write_text(JUNIT)
    return tmp_path


def test_junit_cases_map_back_to_notebooks_cells_and_test_files(tmp_path):
    root = fake_project(tmp_path)
    cases = {case.test: case for case in canary_results.read_junit(root / "results.xml", "notebooks", root)}
    assert len(cases) == 7
    cell = cases["notebooks/05_x.y.ipynb::Cell 2"]
    assert (cell.outcome, cell.notebook, cell.cell) == ("failed", "notebooks/05_x.y.ipynb", 2)
    # nbval counts code cells only: its Cell 2 is the notebook's sixth cell, not its third.
    assert cell.cell_source == "probs = softmax(logits)\nprint(probs)"
    assert "#x1B" not in cell.details and "[94m" not in cell.details and "+ probs: 0.9130" in cell.details
    assert cases["solutions/05_x.y_solutions.ipynb::Cell 0"].outcome == "skipped"
    assert cases["tests/test_ch05_x.py::test_parity[a.b]"].outcome == "passed"
    assert cases["tests/test_ch05_x.py::TestChecker::test_rejects_wrong"].outcome == "failed"
    assert cases["tests/test_ch06_y.py::test_module"].outcome == "error"
    assert cases["notebooks/05_x.y.ipynb::Cell 0"].outcome == "passed"


def test_a_test_run_again_in_a_later_part_keeps_its_latest_outcome():
    first = [Case("unit", "tests/a.py::t", "failed"), Case("unit", "tests/a.py::u", "passed")]
    again = [Case("unit", "tests/a.py::t", "passed")]
    merged = canary_results.merge_cases([first, again])
    assert [(case.test, case.outcome) for case in merged] == [("tests/a.py::u", "passed"), ("tests/a.py::t", "passed")]


# ------------------------------------------------------------------------------------------------ report

STATE = {
    "created": "2026-11-26 06:00 UTC",
    "newest": {"transformers": "5.24.0", "tokenizers": "0.23.3", "nbval": "0.11.0"},
    "changes": [{"package": "transformers", "pinned": "5.23.0", "canary": "5.24.0"}],
    "other_changes": [{"package": "regex", "pinned_env": "2025.9.1", "canary": "2026.1.1"}],
    "install_ok": True,
    "conflicts": [],
    "pip_check": [],
}
RUNS = [{"label": "unit-all", "suite": "unit", "targets": ["tests"], "returncode": 1, "seconds": 60.0}]


def test_the_report_names_the_moved_versions_and_each_broken_notebook_cell_and_test(tmp_path):
    root = fake_project(tmp_path)
    cases = canary_results.read_junit(root / "results.xml", "notebooks", root)
    for case in cases:
        case.suite = "unit" if case.test.startswith("tests/") else "notebooks"
    markdown, short, data = build_report(STATE, cases, RUNS)
    assert "| transformers | 5.23.0 | 5.24.0 |" in markdown
    assert "| regex | 2025.9.1 | 2026.1.1 |" in markdown
    assert "tokenizers 0.23.3" in markdown  # watched, newest already pinned
    assert "transformers 5.23.0 -> 5.24.0" in short
    assert "BROKEN notebooks/05_x.y.ipynb: cell 2" in short
    assert "BROKEN tests/test_ch05_x.py::TestChecker::test_rejects_wrong: AssertionError: checker accepted" in short
    assert "BROKEN tests/test_ch06_y.py::test_module: collection failure" in short
    assert "notebooks: 2 passed, 1 failed, 0 errors, 1 skipped" in short
    assert "unit: 1 passed, 1 failed, 1 errors, 0 skipped" in short
    # The reader sees the cell and its diff, not nbval's echo of the whole input.
    section = markdown.split("### notebooks/05_x.y.ipynb", 1)[1].split("## Broken unit tests")[0]
    assert "probs = softmax(logits)" in section and "+ probs: 0.9130" in section
    assert section.index("Traceback:") < section.index("+ probs: 0.9130")
    assert data["broken_notebooks"] == {
        "notebooks/05_x.y.ipynb": [
            {"cell": 2, "test": "notebooks/05_x.y.ipynb::Cell 2", "outcome": "failed", "pinned_outcome": "",
             "expected": "", "message": "Notebook cell execution failed"},
        ]
    }  # fmt: skip
    assert [item["test"] for item in data["broken_tests"]] == [
        "tests/test_ch05_x.py::TestChecker::test_rejects_wrong",
        "tests/test_ch06_y.py::test_module",
    ]
    assert canary_report.has_findings(data)
    json.dumps(data)  # report.json is written from it


def test_a_clean_run_reports_no_finding_and_a_conflict_or_a_run_without_results_does():
    passing = [Case("unit", "tests/a.py::t", "passed"), Case("notebooks", "notebooks/a.ipynb::Cell 0",
                                                                           "passed", notebook="notebooks/a.ipynb")]
    markdown, short, data = build_report(STATE, passing, RUNS)
    assert not canary_report.has_findings(data)
    assert "## Broken notebooks\n\nNone." in markdown and "## Broken unit tests\n\nNone." in markdown
    conflict = {"what": "transformers==5.30.0 would not install beside the pins",
                "lines": ["transformers 5.30.0 depends on numpy>=2.5"]}  # fmt: skip
    markdown, short, data = build_report({**STATE, "conflicts": [conflict]}, passing, RUNS)
    assert canary_report.has_findings(data)
    assert "install conflict: transformers==5.30.0 would not install beside the pins" in short
    assert "transformers 5.30.0 depends on numpy>=2.5" in markdown
    broken_run = [{**RUNS[0], "returncode": 4, "problem": "pytest exited with status 4 and wrote no junit XML",
                   "output_tail": ["error: unrecognized arguments: --nbval-sanitize-with"]}]  # fmt: skip
    markdown, short, data = build_report(STATE, passing, broken_run)
    assert canary_report.has_findings(data)
    assert "unrecognized arguments: --nbval-sanitize-with" in markdown


# ------------------------------------------------------------------------------------------------ the Makefile


def makefile_variables(text: str) -> dict[str, str]:
    return dict(re.findall(r"^(?:export )?(\w+) :?= ?(.*)$", text, re.MULTILINE))


def recipe(text: str, target: str) -> str:
    return re.search(rf"^{re.escape(target)}:.*\n\t(.*)$", text, re.MULTILINE).group(1)


def expand(line: str, variables: dict[str, str]) -> list[str]:
    return re.sub(r"\$\((\w+)\)", lambda match: variables.get(match.group(1), match.group(0)), line).split()


def test_the_canary_runs_the_same_pytest_commands_as_test_unit_and_test_notebooks(tmp_path):
    text = (ROOT / "Makefile").read_text()
    variables = makefile_variables(text)
    junit = tmp_path / "out.xml"
    for target, suite in (("test-unit", "unit"), ("test-notebooks", "notebooks")):
        targets = canary.UNIT_TARGETS if suite == "unit" else canary_results.NOTEBOOK_TARGETS
        command = canary.pytest_command(canary.CANARY_VENV, suite, targets, junit)
        assert command[0] == str(canary.CANARY_VENV / "bin" / "pytest")
        assert command[-1] == f"--junitxml={junit}"
        assert command[1:-1] == expand(recipe(text, target), variables)[1:], target
    assert "canary" in re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", text, re.MULTILINE).group(1).split()
    assert "tools/canary.py" in recipe(text, "canary")


def test_the_canary_environment_sets_every_makefile_export_inside_the_project(tmp_path):
    variables = makefile_variables((ROOT / "Makefile").read_text())
    exports = re.findall(r"^export (\w+) := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    venv = tmp_path / "venv"
    env = canary.canary_environment(venv, root=ROOT)
    assert exports
    for name, value in exports:
        expected = value.replace("$(CACHE)", str(ROOT / ".cache")).replace("$(CURDIR)", str(ROOT))
        assert "$(" not in expected, (name, variables.get(name))
        assert env[name] == expected, name
    assert env["PATH"].split(":")[0] == str(venv / "bin")
    assert env["VIRTUAL_ENV"] == str(venv)
    # Not moved into the project: test_ch03_head checks how a folder outside it is printed.
    assert env.get("TMPDIR") == os.environ.get("TMPDIR")


def test_only_splits_parts_into_unit_tests_and_notebooks():
    assert canary.split_targets(None) == (["tests"], ["notebooks", "solutions", "book"])
    assert canary.split_targets(["unit"]) == (["tests"], [])
    only = ["tests/test_ch05_x.py", "notebooks/05_x.ipynb", "solutions/05_x_solutions.ipynb", "tests/a.py::t"]
    assert canary.split_targets(only) == (
        ["tests/test_ch05_x.py", "tests/a.py::t"],
        ["notebooks/05_x.ipynb", "solutions/05_x_solutions.ipynb"],
    )
    # Each part has its own result file; the whole suite keeps a fixed name.
    assert canary.run_label("unit", ["tests"]) == "unit-all"
    parts = {canary.run_label("notebooks", [path]) for path in only[1:3]}
    assert len(parts) == 2


# ------------------------------------------------------------------------------------------------ recheck


def test_recheck_runs_broken_unit_tests_by_id_and_notebooks_whole():
    cases = [
        Case("unit", "tests/test_a.py::test_x", "failed"),
        Case("unit", "tests/test_a.py::test_y", "passed"),
        Case("unit", "tests/test_b.py::test_z", "error"),
        Case("notebooks", "notebooks/05_x.ipynb::Cell 3", "failed", notebook="notebooks/05_x.ipynb", cell=3),
        Case("notebooks", "notebooks/05_x.ipynb::Cell 7", "failed", notebook="notebooks/05_x.ipynb", cell=7),
        Case("notebooks", "solutions/05_x_solutions.ipynb::Cell 0", "skipped"),
        Case("notebooks", "notebooks/06_y.ipynb::Cell 0", "failed", notebook="notebooks/06_y.ipynb", cell=0,
                    expected="only the printed library versions differ"),
    ]  # fmt: skip
    assert canary.recheck_targets(cases) == (
        ["tests/test_a.py::test_x", "tests/test_b.py::test_z"],
        ["notebooks/05_x.ipynb"],
    )
    assert canary.recheck_targets(cases, only=["tests/test_b.py"]) == (["tests/test_b.py::test_z"], [])


def test_a_break_that_happens_with_the_pins_too_is_not_reported_as_drift():
    def cases():
        return [
            Case("unit", "tests/test_a.py::test_x", "failed", message="assert 1 == 2"),
            Case("notebooks", "notebooks/05_x.ipynb::Cell 3", "failed", notebook="notebooks/05_x.ipynb",
                        cell=3, message="Notebook cell execution failed"),
        ]  # fmt: skip

    # Not rechecked yet: every break counts.
    markdown, short, data = build_report(STATE, cases(), RUNS)
    assert data["drift"] == 2 and canary_report.has_findings(data)
    assert "not rechecked with the pins" in markdown
    # The pinned .venv fails the unit test too, and passes the notebook cell: only the cell is drift.
    pinned = [Case("unit", "tests/test_a.py::test_x", "failed"),
              Case("notebooks", "notebooks/05_x.ipynb::Cell 3", "passed")]  # fmt: skip
    pinned_runs = [{"label": "unit-test_a-1-0", "targets": ["tests/test_a.py::test_x"], "returncode": 1, "seconds": 2}]
    markdown, short, data = build_report(STATE, with_pinned_outcomes(cases(), pinned), RUNS, pinned_runs)
    assert "| recheck with the pins: unit-test_a-1-0 | tests/test_a.py::test_x | 1 | 2 |" in markdown
    assert "working tree changed" not in markdown  # no fingerprints recorded: nothing to compare
    later = [{**pinned_runs[0], "tree": "b"}]
    _, changed, _ = build_report(STATE, cases(), [{**RUNS[0], "tree": "a"}], later)
    assert "note: the working tree changed between the runs" in changed
    _, same, _ = build_report(STATE, cases(), [{**RUNS[0], "tree": "b"}], later)
    assert "working tree changed" not in same
    assert data["drift"] == 1 and canary_report.has_findings(data)
    assert "BROKEN notebooks/05_x.ipynb: cell 3 (passes with the pins: drift)" in short
    assert "BROKEN tests/test_a.py::test_x (fails with the pins too: not drift): assert 1 == 2" in short
    both = [Case("unit", "tests/test_a.py::test_x", "failed"),
            Case("notebooks", "notebooks/05_x.ipynb::Cell 3", "error")]  # fmt: skip
    markdown, short, data = build_report(STATE, with_pinned_outcomes(cases(), both), RUNS)
    assert data["drift"] == 0 and not canary_report.has_findings(data)


# ------------------------------------------------------------------------------------------------ expected breaks

# What nbval reported for a setup cell in the canary (transformers 5.24.0 instead of the pinned 5.23.0).
VERSIONS_ONLY = """Traceback:
 mismatch 'stdout'

 assert reference_output == test_output failed:

  'python 3.11.... device cpu\\n' == 'python 3.11.... device cpu\\n'

  Skipping 41 identical leading characters in diff, use -v to show
  - ormers 5.24.0 | toke
  ?           ^
  + ormers 5.23.0 | toke
  ?           ^
"""
MORE_THAN_VERSIONS = VERSIONS_ONLY.replace("+ ormers 5.23.0 | toke", "+ ormers 5.23.0 | tokens 12")
MOVED = [{"package": "transformers", "pinned": "5.23.0", "canary": "5.24.0"}]


def test_a_cell_that_differs_only_by_the_printed_versions_is_expected_not_drift():
    assert canary_report.only_versions_differ(VERSIONS_ONLY, MOVED)
    assert not canary_report.only_versions_differ(MORE_THAN_VERSIONS, MOVED)
    assert not canary_report.only_versions_differ(VERSIONS_ONLY, [])  # nothing moved: a real difference
    other = [{"package": "tokenizers", "pinned": "0.23.3", "canary": "0.24.0"}]
    assert not canary_report.only_versions_differ(VERSIONS_ONLY, other)
    # A count that moved (804 model types -> 822) is not a version, even in the same cell.
    counts = VERSIONS_ONLY.replace("ormers 5.24.0 | toke", "822 model types")
    counts = counts.replace("ormers 5.23.0 | toke", "804 model types")
    assert not canary_report.only_versions_differ(counts, MOVED)

    def cell(index, details):
        notebook = f"notebooks/0{index}_x.ipynb"
        return Case("notebooks", f"{notebook}::Cell 0", "failed", details=details, notebook=notebook, cell=0,
                           message="Notebook cell execution failed")  # fmt: skip

    state = {**STATE, "changes": MOVED}
    markdown, short, data = build_report(state, [cell(1, VERSIONS_ONLY), cell(2, MORE_THAN_VERSIONS)], RUNS)
    assert "1 cell(s) differ only by the printed library versions (expected)" in short
    assert "BROKEN notebooks/02_x.ipynb: cell 0" in short and "BROKEN notebooks/01_x.ipynb" not in short
    assert "Expected (only the printed library versions differ" in markdown
    assert "notebooks/01_x.ipynb cell 0" in markdown
    assert data["drift"] == 1
    markdown, short, data = build_report(state, [cell(1, VERSIONS_ONLY)], RUNS)
    assert data["drift"] == 0 and not canary_report.has_findings(data)


PYTEST_LOG = """tests/test_ch08_x.py ....                                         [100%]

=============================== warnings summary ===============================
tests/test_ch08_x.py: 12 warnings
  /v/lib/python3.11/site-packages/transformers/utils/generic.py:1036: FutureWarning: `past_key_values` is \
deprecated and will be removed in version 5.40.0. Use `cache` instead.
    output = func(self, *args, **kwargs)

tests/test_ch14_y.py::test_lora
  /work/main/behind_pipeline/lora.py:12: UserWarning: the book's own warning, not a library's
    warnings.warn(

-- Docs: https://docs.pytest.org/en/stable/how-to/capture-warnings.html
======================= 16 passed, 13 warnings in 3.10s ========================
"""


def test_deprecations_the_new_releases_announce_are_read_from_the_pytest_log():
    found = canary_results.library_warnings(PYTEST_LOG)
    assert found == [{
        "where": "tests/test_ch08_x.py: 12 warnings",
        "warning": "transformers/utils/generic.py:1036: FutureWarning: `past_key_values` is deprecated and will be "
                   "removed in version 5.40.0. Use `cache` instead.",
    }]  # fmt: skip
    assert canary_results.library_warnings("no summary here\n") == []
    markdown, short, data = build_report(STATE, [], [{**RUNS[0], "warnings": found}])
    assert "library warning: transformers/utils/generic.py:1036: FutureWarning: `past_key_values`" in short
    assert data["library_warnings"] == found


def test_a_newest_release_that_conflicts_is_recorded_and_left_for_pip_to_choose(tmp_path, monkeypatch):
    """The install loop, with pip played by a fake: the first try conflicts, the second (transformers and tokenizers
    left to pip) succeeds. The conflict is a finding in versions.json, not a crash."""
    monkeypatch.setattr(canary, "CANARY_DIR", tmp_path / "canary")
    monkeypatch.setattr(canary, "RESULTS_DIR", tmp_path / "canary" / "results")
    monkeypatch.setattr(canary, "CANARY_VENV", tmp_path / "venv")
    monkeypatch.setattr(canary, "REQUIREMENTS", tmp_path / "requirements.txt")
    (tmp_path / "requirements.txt").write_text("torch==2.13.0\ntransformers==5.23.0\ntokenizers==0.23.3\n")
    tried = []

    def fake_pip(command, log, env, timeout=None):
        log.parent.mkdir(parents=True, exist_ok=True)
        if "--dry-run" in command:  # the newest releases
            report = {"install": [{"metadata": {"name": "transformers", "version": "5.30.0"}},
                                  {"metadata": {"name": "tokenizers", "version": "0.23.3"}}]}  # fmt: skip
            Path(command[command.index("--report") + 1]).write_text(json.dumps(report))
            return 0, []
        if "-r" in command:
            tried.append(Path(command[command.index("-r") + 1]).read_text())
            if len(tried) == 1:
                log.write_text(PIP_CONFLICT.replace("numpy==2.4.6", "tokenizers==0.23.3"))
                return 1, ["ERROR: ResolutionImpossible"]
        log.write_text("")
        return 0, []

    monkeypatch.setattr(canary, "run_logged", fake_pip)
    monkeypatch.setattr(canary.subprocess, "run", lambda *a, **k: type("Done", (), {"returncode": 0, "stdout": ""}))
    installed = {"torch": "2.13.0+cpu", "transformers": "5.29.1", "tokenizers": "0.23.3"}
    monkeypatch.setattr(canary, "pip_list", lambda python: installed)
    args = type("Args", (), {"reuse": False, "python": "python3", "release": None})()
    assert canary.install(args) == 0
    assert "transformers==5.30.0" in tried[0]
    assert "\ntransformers\n" in tried[1] and "torch==2.13.0" in tried[1]  # the conflicting ones left to pip
    state = json.loads((tmp_path / "canary" / "versions.json").read_text())
    assert state["install_ok"]
    assert len(state["conflicts"]) == 1
    assert state["conflicts"][0]["what"].startswith("transformers==5.30.0")
    assert "transformers 5.30.0 depends on numpy>=2.5" in state["conflicts"][0]["lines"]
    assert state["changes"] == [{"package": "transformers", "pinned": "5.23.0", "canary": "5.29.1"}]
