"""Measured times name the CPU they were measured on, and the book never adds up two machines' times as one.

tools/timings.py records set-up steps (results/setup.json), tools/execute_notebooks.py the chapters' run times
(results/runtimes.json); each file holds the times of one CPU, and tools/chapter_table.py renders which.
"""

import json

import chapter_table

import timings


def _recorded(folder, step, seconds, cpu):
    folder.mkdir(exist_ok=True)
    (folder / step).write_text(json.dumps({"seconds": seconds, "cpu": cpu}) + "\n")


def test_record_notes_the_cpu_beside_the_time(tmp_path, monkeypatch):
    monkeypatch.setattr(timings, "cpu_model", lambda: "Test CPU 9000")
    timings.record("assets", start=timings.time.time() - 5, timings=tmp_path)
    entry = json.loads((tmp_path / "assets").read_text())
    assert entry["cpu"] == "Test CPU 9000" and 4.5 < entry["seconds"] < 60


def test_gather_keeps_older_steps_of_the_same_cpu_only(tmp_path):
    recorded, target = tmp_path / "timings", tmp_path / "setup.json"
    target.write_text(json.dumps({"cpu": "A", "install": 100.0, "test": 900.0}))
    _recorded(recorded, "assets", 5.0, "A")
    assert timings.gather_setup(recorded, target) == {"cpu": "A", "install": 100.0, "assets": 5.0, "test": 900.0}
    _recorded(recorded, "assets", 7.0, "B")  # another machine: A's install and test must not sit beside it
    assert timings.gather_setup(recorded, target) == {"cpu": "B", "assets": 7.0}
    assert json.loads(target.read_text()) == {"cpu": "B", "assets": 7.0}


def test_gather_skips_a_time_that_does_not_name_its_cpu(tmp_path, capsys):
    recorded, target = tmp_path / "timings", tmp_path / "setup.json"
    recorded.mkdir()
    (recorded / "install").write_text("240.7\n")  # the format before CPUs were recorded
    _recorded(recorded, "test", 1000.0, "A")
    assert timings.gather_setup(recorded, target) == {"cpu": "A", "test": 1000.0}
    assert "skipped install" in capsys.readouterr().out


def test_a_run_time_from_another_cpu_starts_the_file_afresh():
    runtimes = {"cpu": "A", "notebooks/01_tokenizer.ipynb": 11.9, "notebooks/02_model.ipynb": 30.1}
    same = timings.with_time(runtimes, "notebooks/02_model.ipynb", 29.04, "A", "runtimes.json")
    assert same == {"cpu": "A", "notebooks/01_tokenizer.ipynb": 11.9, "notebooks/02_model.ipynb": 29.0}
    other = timings.with_time(runtimes, "notebooks/02_model.ipynb", 45.0, "B", "runtimes.json")
    assert other == {"cpu": "B", "notebooks/02_model.ipynb": 45.0}
    unnamed = {"notebooks/01_tokenizer.ipynb": 11.9}  # times from before the CPU was recorded
    assert timings.with_time(unnamed, "notebooks/01_tokenizer.ipynb", 12.0, "A", "runtimes.json") == {
        "cpu": "A", "notebooks/01_tokenizer.ipynb": 12.0}


def _files(setup_cpu, training_cpu):
    return {"setup.json": {"cpu": setup_cpu, "install": 200.0, "assets": 5.0, "test": 1000.0},
            "runtimes.json": {"cpu": "Chapter CPU"},
            "prepare.json": {"train_examples": 10, "epochs": 1, "train_seconds": 150.0, "validation_accuracy": 0.8,
                             "test_accuracy": 0.8, "cpu": training_cpu},
            "prepare_router.json": {"train_examples": 1, "steps": 1, "train_seconds": 40.0, "cpu": training_cpu}}


def test_the_setup_lines_name_each_cpu_and_add_up_only_one_cpus_times(monkeypatch):
    files = _files("Setup CPU", "Setup CPU")
    monkeypatch.setattr(chapter_table, "results", lambda name: files.get(name, {}))
    one_cpu = "\n".join(chapter_table.setup_lines())
    assert "timed in one fresh clone on Setup CPU" in one_cpu and "`make runtimes` on Chapter CPU" in one_cpu
    assert f"training {chapter_table.about(150)} on Setup CPU" in one_cpu
    assert f"about {chapter_table.about(200 + 5 + 150 + 40 + 1000)}" in one_cpu
    files.update(_files("Setup CPU", "Training CPU"))
    two_cpus = "\n".join(chapter_table.setup_lines())
    assert f"training {chapter_table.about(150)} on Training CPU" in two_cpus
    assert "not added up" in two_cpus and f"about {chapter_table.about(200 + 5 + 150 + 40 + 1000)}" not in two_cpus
    del files["setup.json"]["cpu"], files["runtimes.json"]["cpu"]
    unnamed = "\n".join(chapter_table.setup_lines())
    assert "timed in one fresh clone on a CPU not recorded" in unnamed and "not added up" in unnamed
    files["setup.json"]["prepare"] = 400.0  # make prepare measured in the same clone: its own time is the sum's
    assert f"about {chapter_table.about(200 + 5 + 400 + 1000)}" in "\n".join(chapter_table.setup_lines())
