"""Rules every notebook of the book keeps, so that nbval's comparison means something."""

import json
import re
import subprocess
import sys

import nbformat
import pytest

from notebook_files import CHECKED_FOLDERS, ROOT, notebooks, unexpected_errors

CHECKED = notebooks(CHECKED_FOLDERS)
CHAPTERS = notebooks(("notebooks",))
SOLUTIONS = notebooks(("solutions",))
ALL = notebooks()


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" and c.source.strip()]


def _assert_tool_check_passes(tool):
    """``python tool --check`` exits 0: what the tool keeps (clean notebooks, exercises, tables) is current; if not,
    its output says what is stale."""
    result = subprocess.run([sys.executable, tool, "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_book_has_chapters_and_solutions():
    assert CHAPTERS and SOLUTIONS


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.name)
def test_every_code_cell_has_stored_outputs(path):
    missing = [i for i, cell in enumerate(_code_cells(path)) if not cell.outputs]
    assert not missing, f"code cells {missing} have no stored output: run `make execute NOTEBOOKS={path.name}`"


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.name)
def test_errors_are_stored_only_where_a_pitfall_raises_on_purpose(path):
    assert not unexpected_errors(path)
    for cell in _code_cells(path):
        if "raises-exception" in cell.metadata.get("tags", []):
            assert any(o.output_type == "error" for o in cell.outputs), f"{cell.source[:60]!r} is tagged but ran fine"


def test_notebooks_are_clean():
    _assert_tool_check_passes("tools/clean_notebooks.py")


def test_exercises_are_generated_from_solutions():
    _assert_tool_check_passes("tools/make_exercises.py")


def test_ruff_lints_python_and_notebooks():
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "ruff"), "check", "."], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("chapter", [p for p in CHAPTERS if not p.name.startswith("00_")], ids=lambda p: p.name)
def test_each_chapter_has_three_checked_exercises(chapter):
    solution = ROOT / "solutions" / chapter.name.replace(".ipynb", "_solutions.ipynb")
    assert solution.exists(), f"{chapter.name} has no solution notebook"
    assert (ROOT / "exercises" / chapter.name.replace(".ipynb", "_exercises.ipynb")).exists()
    check_cells = [c for c in _code_cells(solution) if re.search(r"^check_\w+\(", c.source, re.MULTILINE)]
    assert len(check_cells) >= 3
    for cell in check_cells:
        shown = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs)
        assert "all checks passed" in shown, f"{solution.name}: {cell.source!r} shows {shown!r}"
    blanked = "\n".join(c.source for c in _code_cells(solution))
    assert blanked.count("### BEGIN SOLUTION") >= 3


def test_runtimes_are_measured_for_every_notebook():
    runtimes = json.loads((ROOT / "results" / "runtimes.json").read_text())
    missing = [str(p.relative_to(ROOT)) for p in CHECKED if str(p.relative_to(ROOT)) not in runtimes]
    assert not missing, f"run `make runtimes` for {missing}"


def test_readme_chapter_table_is_current():
    _assert_tool_check_passes("tools/chapter_table.py")


def test_setup_lines_name_and_add_up_the_steps_that_were_timed(monkeypatch):
    """A measured `make prepare` is named among the timed steps and replaces the sum of the trainings in the total;
    without one, the total adds the trainings' own times."""
    import chapter_table

    files = {"setup.json": {"install": 200.0, "assets": 5.0, "test": 1000.0, "cpu": "A"},
             "prepare.json": {"train_examples": 10, "epochs": 1, "train_seconds": 150.0, "validation_accuracy": 0.8,
                              "test_accuracy": 0.8, "cpu": "A"},
             "prepare_generator.json": {"parameters": 1, "steps": 1, "train_seconds": 50.0},
             "prepare_router.json": {"train_examples": 1, "steps": 1, "train_seconds": 40.0, "cpu": "A"}}
    monkeypatch.setattr(chapter_table, "results", lambda name: files.get(name, {}))
    without = "\n".join(chapter_table.setup_lines())
    assert "`make install`, `make assets` and `make test` were timed" in without
    # the generator ships trained: its training time is not a set-up step
    assert f"about {chapter_table.about(200 + 5 + 150 + 40 + 1000)}" in without
    files["setup.json"]["prepare"] = 400.0
    measured = "\n".join(chapter_table.setup_lines())
    assert "`make install`, `make assets`, `make prepare` and `make test` were timed" in measured
    label = "`make prepare` (the three trained models and the shipped one, from none)"
    assert f"- {label}: {chapter_table.about(400)}" in measured
    assert f"about {chapter_table.about(200 + 5 + 400 + 1000)}" in measured


def test_results_tables_are_current():
    _assert_tool_check_passes("tools/results_tables.py")


def _experiment_chapters():
    return [path for path in CHAPTERS if any(
        "parameters" in cell.metadata.get("tags", []) and "RESULTS_DIR =" in cell.source for cell in _code_cells(path))]


@pytest.mark.parametrize("chapter", _experiment_chapters(), ids=lambda p: p.name)
def test_the_parameters_cell_only_defines_what_papermill_may_replace(chapter):
    """Papermill adds its values in a new cell *after* the one tagged `parameters`: anything that cell computes from
    RUN (e.g. `SIZES = {...}[RUN]`) keeps the stored value, and `make full` would silently run the small setting."""
    cell = next(c for c in _code_cells(chapter) if "parameters" in c.metadata.get("tags", []))
    assert "[RUN]" not in cell.source and "RUN]" not in cell.source, cell.source


@pytest.mark.parametrize("chapter", _experiment_chapters(), ids=lambda p: p.name)
def test_small_run_results_are_what_the_stored_notebook_prints(chapter):
    """`make small` runs the stored settings: every score it recorded must appear in the stored outputs as printed.

    Fails when a notebook changed (settings, code) without `make small` being run again, or the other way round.
    """
    recorded = ROOT / "results" / "small" / f"{chapter.stem}.json"
    assert recorded.exists(), f"no small-run results for {chapter.name}: run `make small`"
    compared = [cell for cell in _code_cells(chapter) if "nbval-ignore-output" not in cell.metadata.get("tags", [])]
    shown = "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                    for cell in compared for output in cell.outputs)
    for row in json.loads(recorded.read_text())["rows"]:
        for key in ("accuracy", "macro_f1"):
            if key in row:
                value = row[key]
                assert f"{value:.4f}" in shown or str(value) in shown, (
                    f"{chapter.name}: {row['model']} {key} {value} from `make small` is not in the stored outputs")


def _one_cell_notebook(source, stored, made_on, tags=("depends-on-cpu",)):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    if made_on is not None:
        nb.metadata["behind_pipeline"] = {"outputs_made_on": made_on}
    cell = nbformat.v4.new_code_cell(source, execution_count=1, metadata={"tags": list(tags)})
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored)]
    nb.cells = [cell]
    return nb


def test_nbval_fails_when_a_stored_output_is_wrong(tmp_path):
    """Proof that the comparison is on: a notebook whose stored output is wrong must fail under our settings."""
    nb = _one_cell_notebook("print(round(2 / 3, 4))", "0.6667\n", made_on=None, tags=())
    cell = nb.cells[0]
    nbval_args = ["-m", "pytest", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
                  "--nbval-sanitize-with", str(ROOT / "tests" / "sanitize.cfg"), "-q"]
    good = tmp_path / "good.ipynb"
    nbformat.write(nb, good)
    cell.outputs[0].text = "0.6666\n"
    bad = tmp_path / "bad.ipynb"
    nbformat.write(nb, bad)
    # One pytest for both (a start-up is seconds); its progress line, in the order given, says which failed.
    run = subprocess.run([sys.executable, *nbval_args, str(good), str(bad)], cwd=tmp_path, capture_output=True,
                         text=True)
    assert run.returncode == 1 and run.stdout.startswith(".F ") and "1 failed, 1 passed" in run.stdout, run.stdout


def test_a_cpu_dependent_cell_is_compared_only_on_the_kind_of_cpu_that_stored_it(tmp_path):
    """behind_pipeline/nbval_cpu.py: a cell tagged depends-on-cpu whose stored output is wrong fails on the kind of
    CPU recorded in its notebook, passes on another, and its assert fails everywhere."""
    from behind_pipeline.runtime import cpu_kind

    wrong = "print(round(2 / 3, 4))"
    cases = {"here.ipynb": _one_cell_notebook(wrong, "0.6666\n", cpu_kind()),
             "elsewhere.ipynb": _one_cell_notebook(wrong, "0.6666\n", "another CPU"),
             "untagged.ipynb": _one_cell_notebook(wrong, "0.6666\n", "another CPU", tags=()),
             "asserts.ipynb": _one_cell_notebook("assert 2 / 3 > 1", "", "another CPU")}
    for name, nb in cases.items():
        nbformat.write(nb, tmp_path / name)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "behind_pipeline.nbval_cpu",
                          "--nbval", "--nbval-current-env", "-q", *cases], cwd=tmp_path, capture_output=True, text=True)
    assert run.stdout.startswith("F.FF ") and "3 failed, 1 passed" in run.stdout, run.stdout
    assert "2 cells tagged depends-on-cpu ran without comparing their outputs: stored on another CPU" in run.stdout


def test_the_cleaner_wants_a_reason_for_each_cpu_dependent_cell():
    from clean_notebooks import problems

    nb = _one_cell_notebook("print(1)", "1\n", "another CPU")
    assert any("depends-on-cpu" in problem for problem in problems(nb))
    nb.cells[0].source = "# Output compared only on the kind of CPU that stored it: int8 kernels differ.\nprint(1)"
    assert problems(nb) == []


def test_exercises_lose_the_cpu_comment_but_keep_the_cell_s_own():
    from make_exercises import without_cpu_comment

    why = "# Output compared only on the kind of CPU that stored it: int8 kernels take\n# other paths."
    assert without_cpu_comment(f"{why}\n# the cell's own comment\nx = 1") == "# the cell's own comment\nx = 1"
    assert without_cpu_comment(f"{why}\nx = 1") == "x = 1"
    assert without_cpu_comment("# a comment.\nx = 1") == "# a comment.\nx = 1"  # no CPU comment: unchanged


def test_every_checked_notebook_records_the_cpu_its_outputs_were_made_on():
    from behind_pipeline.nbval_cpu import outputs_made_on

    missing = [str(path.relative_to(ROOT)) for path in CHECKED if not outputs_made_on(nbformat.read(path, 4))]
    assert not missing, f"{missing}: run them with tools/execute_notebooks.py, which records it"


def test_sanitizer_hides_float_noise_but_not_real_differences():
    import configparser

    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tests" / "sanitize.cfg")

    def sanitized(text):
        for section in config.sections():
            text = re.sub(config[section]["regex"], config[section]["replace"], text)
        return text

    assert sanitized("max abs diff: 4.8e-07") == sanitized("max abs diff: 5.1e-07") == "max abs diff: <1e-4"
    assert sanitized("max abs diff: 0.0e+00") == "max abs diff: <1e-4"
    for compared in ("without the mask: 1.6e+00", "tanh GELU: 4.5e-03", "0.9804", "max abs diff: 1.2e-04"):
        assert sanitized(compared) == compared


def test_a_score_over_seeds_prints_its_spread_in_the_same_column():
    from results_tables import score_cell, spread_note

    over_seeds = {"accuracy": 0.71234, "accuracy_sd": 0.0123, "seeds": 5, "source": "12_training_loop"}
    assert score_cell("accuracy", over_seeds) == "0.7123 ± 0.0123"
    assert "12_training_loop: 5 seeds" in spread_note([{"accuracy": 0.7}, over_seeds])[-1]
    assert "12_training_loop: 5 seeds, 482 test reviews" in spread_note([{**over_seeds, "test_reviews": 482}])[-1]
    assert spread_note([{"accuracy": 0.7}]) == []  # no row over seeds: no note
    assert score_cell("accuracy", {"accuracy": 0.71234}) == "0.7123"  # one run: no spread to show
    assert score_cell("macro_f1", over_seeds) == ""  # not recorded: an empty cell, no "±"
