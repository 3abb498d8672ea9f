"""Grade a folder of learners' exercise notebooks: run each one, and tabulate which checks pass.

    python tools/grade.py SUBMISSIONS                      # prints the table, writes SUBMISSIONS/grades.csv
    python tools/grade.py SUBMISSIONS --out grades.csv --timeout 300 --keep executed/
    python tools/grade.py SUBMISSIONS --jobs 2             # two notebooks at once

SUBMISSIONS holds one folder per learner; every ``NN_topic_exercises.ipynb`` found in a learner's folder (at any
depth, e.g. ``alice/exercises/11_trainer_exercises.ipynb``) is run from the top by papermill in a kernel of its
own, in the notebook's folder, and stopped after ``--timeout`` seconds. Papermill writes the executed copy
elsewhere: the learner's file is never changed. A notebook that raises stops at that cell: its remaining checks
count as not passed ("crashed"); one that runs too long is killed with its kernel ("timed out"). Neither stops
the other notebooks. ``--keep`` keeps each executed copy (to see where a notebook crashed) and its check log.

The checks are read as data, not from the printed text: ``behind_pipeline.checks._core`` appends one JSON record
per check cell to the file named by ``BTP_CHECK_LOG``, which this tool sets for each run. The checks expected of a
notebook are the ``check_...(...)`` cells of the book's own ``exercises/`` copy of the same name (of the learner's
notebook when the book has none), so a deleted check cell counts as not passed ("no report").
"""

import argparse
import ast
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from behind_pipeline.checks._core import CHECK_LOG_VARIABLE
from behind_pipeline.paths import configure_environment

from notebook_files import ROOT

PATTERN = "*_exercises.ipynb"
COLUMNS = ("learner", "notebook", "exercise", "passed", "status", "note")
DEFAULT_TIMEOUT = 300  # seconds per notebook; generous next to the measured times in results/runtimes.json


@dataclass
class Run:
    """What one notebook's run left behind: how it ended, the check records, and where it stopped."""

    ended: str  # "finished", "crashed" or "timed out"
    records: list[dict] = field(default_factory=list)
    note: str = ""


def checker_called(source: str) -> str | None:
    """The ``check_...`` function a cell's last expression calls: ``check_decode(decode)`` -> ``"check_decode"``."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    last = body[-1] if body else None
    if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) and isinstance(last.value.func, ast.Name):
        name = last.value.func.id
        return name if name.startswith("check_") else None
    return None


def expected_checks(notebook: Path) -> list[str]:
    """The checkers a notebook's check cells call, in order."""
    nb = nbformat.read(notebook, as_version=4)
    found = (checker_called(cell.source) for cell in nb.cells if cell.cell_type == "code")
    return [name for name in found if name]


def submissions(folder: Path) -> list[tuple[str, str, Path]]:
    """(learner, notebook's path in the learner's folder, notebook) for every exercise notebook, sorted."""
    found = []
    for learner in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        notebooks = sorted(p for p in learner.rglob(PATTERN) if ".ipynb_checkpoints" not in p.parts)
        found += [(learner.name, notebook.relative_to(learner).as_posix(), notebook) for notebook in notebooks]
    return found


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the kernel runs in a session of its own, so a process group misses it)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    for pid in [*_descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _error_note(executed: Path, notebook: Path) -> str:
    """Which cell of the learner's notebook raised what, read from the executed copy papermill writes.

    Papermill adds markdown cells (an error banner) to its copy but no code cell, so the n-th code cell of the
    copy is the n-th code cell of the learner's notebook, whose position (the first cell is 1) the note gives.
    """
    if not executed.exists():
        return ""
    ran = [cell for cell in nbformat.read(executed, as_version=4).cells if cell.cell_type == "code"]
    failed = next((n for n, cell in enumerate(ran) if any(o.output_type == "error" for o in cell.outputs)), None)
    if failed is None:
        return ""
    error = next(o for o in ran[failed].outputs if o.output_type == "error")
    cells = nbformat.read(notebook, as_version=4).cells
    code_positions = [index + 1 for index, cell in enumerate(cells) if cell.cell_type == "code"]
    where = f"cell {code_positions[failed]}" if failed < len(code_positions) else f"code cell {failed + 1}"
    first_line = ran[failed].source.strip().splitlines()[0][:40] if ran[failed].source.strip() else ""
    return f"{where} ({first_line}) raised {error.ename}: {error.evalue}"[:200]


def run_notebook(notebook: Path, workdir: Path, timeout: float) -> Run:
    """Run ``notebook`` with papermill in its own kernel, in ``workdir``, within ``timeout`` seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    log, executed = workdir / "checks.jsonl", workdir / notebook.name
    for stale in (log, executed):  # a kept folder from an earlier run: the log is appended to
        stale.unlink(missing_ok=True)
    env = os.environ | {CHECK_LOG_VARIABLE: str(log)}
    command = [sys.executable, "-m", "papermill", str(notebook), str(executed), "--kernel", "python3",
               "--cwd", str(notebook.parent), "--no-progress-bar", "--log-level", "ERROR"]
    with open(workdir / "papermill.log", "wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(process)
            returncode = None
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if returncode is None:
        return Run("timed out", records, f"stopped after {timeout:g} s")
    if returncode != 0:
        note = _error_note(executed, notebook) or (workdir / "papermill.log").read_text(errors="replace").strip()[-200:]
        return Run("crashed", records, note)
    return Run("finished", records)


def rows_for(learner: str, notebook: str, run: Run, checks: list[str]) -> list[dict]:
    """One row per expected check: the last record of that checker, or why there is none."""
    latest = {checker_called(record.get("cell") or ""): record for record in run.records}
    rows = []
    for check in checks:
        record = latest.get(check)
        if record is not None:
            passed = bool(record["passed"])
            failures = record.get("failures", [])
            status = "passed" if passed else "failed"
            note = "" if passed else f"{len(failures)} to fix; first: {failures[0]}" if failures else "no checks ran"
        else:
            passed = False
            status = {"finished": "no report"}.get(run.ended, run.ended)
            note = run.note if status != "no report" else "the check cell did not return its report"
        rows.append({"learner": learner, "notebook": notebook, "exercise": check,
                     "passed": "yes" if passed else "no", "status": status, "note": note})
    return rows


def grade(folder: Path, timeout: float = DEFAULT_TIMEOUT, keep: Path | None = None,
          reference: Path = ROOT / "exercises", jobs: int = 1) -> list[dict]:
    """Run every submission in ``folder`` and return the table's rows, in the order of :func:`submissions`.

    Each run's executed copy, check log (``checks.jsonl``) and papermill output go to ``keep/<learner>/<notebook>/``
    when ``keep`` is given, to a temporary folder otherwise. ``jobs`` notebooks run at once, each in its own
    kernel, in its own folder and with its own ``timeout``; the rows come back in the same order whatever
    ``jobs`` is. Runs side by side share the cores, so each takes longer than alone: leave room in ``timeout``.
    """
    found = submissions(folder)
    with tempfile.TemporaryDirectory(prefix="btp-grade-") as scratch:

        def graded(submission: tuple[str, str, Path]) -> list[dict]:
            learner, name, notebook = submission
            book_copy = reference / notebook.name
            checks = expected_checks(book_copy if book_copy.exists() else notebook)
            started = time.perf_counter()
            run = run_notebook(notebook, Path(keep or scratch) / learner / Path(name).with_suffix(""), timeout)
            print(f"{learner}/{name}: {run.ended} in {time.perf_counter() - started:.0f} s", file=sys.stderr,
                  flush=True)
            return rows_for(learner, name, run, checks)

        # Threads are enough: each one waits on a papermill process of its own.
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # it refuses jobs < 1 itself
            return [row for rows in pool.map(graded, found) for row in rows]


def format_table(rows: list[dict], note_width: int = 70) -> str:
    shown = [{**row, "note": row["note"][:note_width]} for row in rows]
    widths = {column: max(len(column), *(len(row[column]) for row in shown)) for column in COLUMNS}
    lines = ["  ".join(column.ljust(widths[column]) for column in COLUMNS).rstrip()]
    lines += ["  ".join(row[column].ljust(widths[column]) for column in COLUMNS).rstrip() for row in shown]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="one subfolder per learner, holding NN_topic_exercises.ipynb")
    parser.add_argument("--out", type=Path, help="CSV to write (default: FOLDER/grades.csv)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per notebook")
    parser.add_argument("--keep", type=Path, help="keep each executed copy and its check log in this folder")
    parser.add_argument("--jobs", type=int, default=1,
                        help="notebooks run at once (default 1; each still gets --timeout seconds of its own)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs takes 1 or more")
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    if not submissions(args.folder):
        parser.error(f"no {PATTERN} in any learner's folder of {args.folder}")
    rows = grade(args.folder, args.timeout, args.keep, jobs=args.jobs)
    out = args.out or args.folder / "grades.csv"
    write_csv(rows, out)
    print(format_table(rows))
    passed = sum(row["passed"] == "yes" for row in rows)
    print(f"\n{passed} of {len(rows)} checks passed; table written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
