"""`make grade` (tools/grade.py): a folder of five learners' chapter 11 notebooks, graded from the check log.

Chapter 11 has the fastest solutions notebook (results/runtimes.json), so the five runs, two at a time and one of
them stopped by the timeout, take about a minute. The learners: the solution (correct), the generated exercise
notebook (blank), the solution with a typical mistake in exercise 2 (wrong), a cell that raises before exercise 2
(crashing) and a loop that never ends before exercise 3 (never-ending).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from behind_pipeline.checks._core import CHECK_LOG_VARIABLE
from behind_pipeline.paths import PROJECT_ROOT as ROOT  # the one definition of the project root

import grade

NOTEBOOK = "11_trainer_exercises.ipynb"
SOLUTION = ROOT / "solutions" / "11_trainer_solutions.ipynb"
CHECKS = ["check_make_compute_metrics", "check_early_stopping_outcome", "check_make_weighted_loss"]
# Seconds per notebook: the never-ending learner costs this much. The correct one takes about 18 s alone on an
# AVX2 2-core machine, more beside another run; the test below fails if a learner other than the never-ending one
# runs out of time, since the others' rows would then hide a timeout behind checks that ran before it.
TIMEOUT = 40
JOBS = 2  # two notebooks at once, as an instructor with a 2-core machine would grade
# Trainer's rule is strict: a value equal to the best is no improvement. The learner's `>=` counts ties.
STRICT, TIE_COUNTS = "value > best if greater_is_better else value < best", \
    "value >= best if greater_is_better else value <= best"


def check_cell_index(nb, check: str) -> int:
    return next(i for i, cell in enumerate(nb.cells) if grade.checker_called(cell.source) == check)


def correct():
    return nbformat.read(SOLUTION, as_version=4)


def blank():
    return nbformat.read(ROOT / "exercises" / NOTEBOOK, as_version=4)


def wrong():
    nb = correct()
    answer = nb.cells[check_cell_index(nb, "check_early_stopping_outcome") - 1]
    assert STRICT in answer.source, "the solution changed: update the sabotage"
    answer.source = answer.source.replace(STRICT, TIE_COUNTS)
    return nb


def inserted_before_answer(check: str, source: str):
    """The solution with a cell ``source`` placed just before the answer cell of ``check``'s exercise."""
    nb = correct()
    nb.cells.insert(check_cell_index(nb, check) - 1, nbformat.v4.new_code_cell(source))
    return nb


def crashing():
    return inserted_before_answer("check_early_stopping_outcome", "best = max([])  # a learner's bug: empty list")


def never_ending():
    return inserted_before_answer("check_make_weighted_loss", "while True:  # a loop that never ends\n    pass")


LEARNERS = {"correct": correct, "blank": blank, "wrong": wrong, "crashing": crashing, "never_ending": never_ending}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the five learners once: the rows, the CSV and the folder of kept runs."""
    folder = tmp_path_factory.mktemp("submissions")
    for learner, make in LEARNERS.items():
        (folder / learner / "exercises").mkdir(parents=True)
        nbformat.write(make(), folder / learner / "exercises" / NOTEBOOK)
    kept, out = tmp_path_factory.mktemp("runs"), folder / "grades.csv"
    assert grade.main([str(folder), "--timeout", str(TIMEOUT), "--keep", str(kept), "--jobs", str(JOBS)]) == 0
    with open(out, newline="") as table:
        rows = list(csv.DictReader(table))
    return rows, kept


def statuses(rows, learner):
    return {row["exercise"]: (row["passed"], row["status"]) for row in rows if row["learner"] == learner}


def test_one_row_per_learner_and_check_in_the_csv(graded):
    rows, _ = graded
    assert [(row["learner"], row["exercise"]) for row in rows] == [
        (learner, check) for learner in sorted(LEARNERS) for check in CHECKS]
    assert {row["notebook"] for row in rows} == {f"exercises/{NOTEBOOK}"}


def test_correct_learner_passes_every_check(graded):
    rows, _ = graded
    assert statuses(rows, "correct") == {check: ("yes", "passed") for check in CHECKS}


def test_blank_notebook_runs_to_the_end_and_passes_nothing(graded):
    rows, _ = graded
    assert statuses(rows, "blank") == {check: ("no", "failed") for check in CHECKS}


def test_wrong_answer_fails_exactly_the_sabotaged_exercise(graded):
    rows, _ = graded
    expected = {check: ("yes", "passed") for check in CHECKS} | {"check_early_stopping_outcome": ("no", "failed")}
    assert statuses(rows, "wrong") == expected
    [row] = [r for r in rows if r["learner"] == "wrong" and r["status"] == "failed"]
    assert "a value equal to the best is not an improvement" in row["note"]  # the checker named the mistake


def test_crash_counts_the_remaining_checks_as_not_passed(graded):
    rows, _ = graded
    assert statuses(rows, "crashing") == {"check_make_compute_metrics": ("yes", "passed"),
                                          "check_early_stopping_outcome": ("no", "crashed"),
                                          "check_make_weighted_loss": ("no", "crashed")}
    position = next(i for i, cell in enumerate(crashing().cells) if cell.source.startswith("best = max([])")) + 1
    assert all(row["note"].startswith(f"cell {position} (best = max([])") and "ValueError" in row["note"]
               for row in rows if row["status"] == "crashed")


def test_never_ending_notebook_is_stopped_and_keeps_what_it_checked(graded):
    rows, _ = graded
    assert statuses(rows, "never_ending") == {"check_make_compute_metrics": ("yes", "passed"),
                                              "check_early_stopping_outcome": ("yes", "passed"),
                                              "check_make_weighted_loss": ("no", "timed out")}


def test_the_timed_out_kernel_is_gone(graded):
    """Its kernel ran in a session of its own: the kill reached it too (no process left with its check log)."""
    _, kept = graded
    log = str(kept / "never_ending")
    left = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if log.encode() in environ.read_bytes():
                left.append(environ.parent.name)
        except OSError:
            continue
    assert left == []


def test_only_the_never_ending_notebook_ran_out_of_time(graded):
    """Papermill stamps an end time on the copy of a notebook it ran to its end or to its error, not on one killed."""
    _, kept = graded
    ended = {learner: nbformat.read(kept / learner / "exercises" / "11_trainer_exercises" / NOTEBOOK,
                                    as_version=4).metadata.papermill.get("end_time") is not None
             for learner in LEARNERS}
    assert ended == {learner: learner != "never_ending" for learner in LEARNERS}


def test_one_record_per_check_cell_that_ran(graded):
    _, kept = graded
    records = [json.loads(line) for line in (kept / "correct" / "exercises" / "11_trainer_exercises" /
                                             "checks.jsonl").read_text().splitlines()]
    assert [grade.checker_called(record["cell"]) for record in records] == CHECKS
    assert all(record["passed"] and record["failures"] == [] for record in records)


SHELL_SCRIPT = """
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
shell.run_cell("from IPython.display import display\\nfrom behind_pipeline.checks import CheckReport")
shell.run_cell("report = CheckReport('shown three times')\\nreport.ok('fine')\\n"
               "display(report)\\nprint(repr(report))\\nreport")
shell.run_cell("kept = CheckReport('not the cell value')\\nkept.fail('wrong')")
shell.run_cell("failing = CheckReport('failing')\\nfailing.fail('first')\\nfailing.fail('second')\\nfailing")
"""


@pytest.mark.parametrize("log_set", [True, False], ids=["log_set", "log_unset"])
def test_a_displayed_report_is_logged_once_and_only_when_asked(tmp_path, log_set):
    log = tmp_path / "checks.jsonl"
    env = {key: value for key, value in os.environ.items() if key != CHECK_LOG_VARIABLE}
    env |= {CHECK_LOG_VARIABLE: str(log)} if log_set else {}
    shown = subprocess.run([sys.executable, "-c", SHELL_SCRIPT], env=env, capture_output=True, text=True,
                           check=True).stdout
    assert shown.count("shown three times: all checks passed") == 3  # what the learner sees is unchanged
    if not log_set:
        assert not log.exists()
        return
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [{key: r[key] for key in ("exercise", "passed", "failures")} for r in records] == [
        {"exercise": "shown three times", "passed": True, "failures": []},
        {"exercise": "failing", "passed": False, "failures": ["first", "second"]},
    ]


@pytest.mark.parametrize(("source", "expected"), [
    ("check_decode(decode)", "check_decode"),
    ("x = 1\ncheck_pooling_probe(sentence_features, probe_accuracy)", "check_pooling_probe"),
    ("report = check_decode(decode)", None),
    ("print(check_decode(decode))", None),
    ("decode(ids)", None),
    ("def broken(:", None),
    ("", None),
])
def test_checker_called_reads_the_last_expression(source, expected):
    assert grade.checker_called(source) == expected


def test_runs_side_by_side_keep_the_rows_in_the_order_of_the_learners(tmp_path, monkeypatch):
    """With --jobs 3 the three runs start together (each waits at a barrier for the other two, which fails unless
    they run at once) and the later learners finish first; the table still lists the learners in order."""
    import threading
    import time

    for learner in ("ann", "bob", "cat"):
        (tmp_path / learner).mkdir()
        nbformat.write(blank(), tmp_path / learner / NOTEBOOK)
    all_started = threading.Barrier(3, timeout=10)

    def fake_run(notebook, workdir, timeout):
        learner = notebook.parent.name
        all_started.wait()
        time.sleep({"ann": 0.6, "bob": 0.3, "cat": 0.0}[learner])
        return grade.Run("finished", [{"cell": f"{CHECKS[0]}(x)", "passed": learner != "bob", "failures": ["no"]}])

    monkeypatch.setattr(grade, "run_notebook", fake_run)
    rows = grade.grade(tmp_path, jobs=3)
    assert [(row["learner"], row["exercise"]) for row in rows] == [
        (learner, check) for learner in ("ann", "bob", "cat") for check in CHECKS]
    assert [row["passed"] for row in rows if row["exercise"] == CHECKS[0]] == ["yes", "no", "yes"]
