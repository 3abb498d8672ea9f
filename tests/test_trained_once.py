"""behind_pipeline.trained_once: the fingerprint moves with what shapes the weights and nothing else; a model is
saved whole or not at all; concurrent callers train once."""

import doctest
import json
import threading
import time

import pytest

from behind_pipeline import trained_once

VERSIONS = {"torch": "2.13.0", "transformers": "5.23.0", "tokenizers": "0.23.3"}
BASE = {"recipe": 1, "settings": {"seed": 0, "learning_rate": 2e-4}, "data": "0123abcd", "versions": VERSIONS}


def test_the_docstring_example_holds():
    assert doctest.testmod(trained_once).failed == 0


@pytest.mark.parametrize(("field", "other"), [("recipe", 2), ("settings", {"seed": 1, "learning_rate": 2e-4}),
                                              ("data", "0123abce"), ("versions", VERSIONS | {"torch": "2.14.0"})])
def test_the_fingerprint_moves_with_each_thing_that_shapes_the_weights(field, other):
    assert trained_once.fingerprint(**BASE) != trained_once.fingerprint(**BASE | {field: other})


def test_the_fingerprint_ignores_the_order_of_settings():
    reordered = BASE | {"settings": {"learning_rate": 2e-4, "seed": 0}}
    assert trained_once.fingerprint(**BASE) == trained_once.fingerprint(**reordered)


def test_the_data_digest_sees_a_changed_a_moved_and_a_shifted_row():
    texts, labels = ["a", "b", "c"], [0, 1, 1]
    digest = trained_once.data_digest(texts, labels)
    assert digest == trained_once.data_digest(list(texts), list(labels))
    assert digest != trained_once.data_digest(["a", "b", "C"], labels)
    assert digest != trained_once.data_digest(["b", "a", "c"], labels)
    assert trained_once.data_digest(["a", "b"], ["c"]) != trained_once.data_digest(["a"], ["b", "c"])


def test_the_library_versions_are_the_installed_ones():
    from importlib.metadata import version

    assert trained_once.library_versions() == {name: version(name) for name in trained_once.SHAPING_LIBRARIES}


def write_model(folder):
    (folder / trained_once.WEIGHTS_FILE).write_bytes(b"weights")


def test_save_replaces_the_folder_whole_and_leaves_no_partial(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "stale.txt").write_text("from the old model")
    trained_once.save(folder, write_model, {"fingerprint": "f1"})
    assert sorted(p.name for p in folder.iterdir()) == [trained_once.WEIGHTS_FILE, trained_once.SUMMARY_FILE]
    assert json.loads((folder / trained_once.SUMMARY_FILE).read_text()) == {"fingerprint": "f1"}
    assert not (tmp_path / "model.partial").exists()
    assert trained_once.is_current(folder, "f1") and not trained_once.is_current(folder, "f2")


def test_a_failed_training_leaves_the_old_model_in_place(tmp_path):
    folder = tmp_path / "model"
    trained_once.save(folder, write_model, {"fingerprint": "f1"})

    def broken(partial):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        trained_once.save(folder, broken, {"fingerprint": "f2"})
    assert trained_once.is_current(folder, "f1")


def test_a_summary_without_weights_is_not_a_model(tmp_path):
    (tmp_path / trained_once.SUMMARY_FILE).write_text(json.dumps({"fingerprint": "f1"}))
    assert trained_once.read_summary(tmp_path) is None and not trained_once.is_current(tmp_path, "f1")


def test_ensure_trains_once_then_only_touches_the_summary(tmp_path):
    folder, calls = tmp_path / "model", []

    def train():
        calls.append(1)
        return trained_once.save(folder, write_model, {"fingerprint": "f1"})

    assert trained_once.ensure(folder, "f1", train, announce=lambda line: None) is True
    summary = folder / trained_once.SUMMARY_FILE
    before = summary.stat().st_mtime_ns
    time.sleep(0.01)
    assert trained_once.ensure(folder, "f1", train, announce=lambda line: None) is False
    assert calls == [1] and summary.stat().st_mtime_ns > before
    assert trained_once.ensure(folder, "f2", lambda: trained_once.save(folder, write_model, {"fingerprint": "f2"}),
                               announce=lambda line: None) is True


def test_ensure_refuses_a_training_that_saves_another_fingerprint(tmp_path):
    folder = tmp_path / "model"
    with pytest.raises(RuntimeError, match="no model with fingerprint f1"):
        trained_once.ensure(folder, "f1", lambda: trained_once.save(folder, write_model, {"fingerprint": "f0"}),
                            announce=lambda line: None)


def test_concurrent_callers_train_once(tmp_path):
    folder, calls = tmp_path / "model", []

    def slow_train():
        calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the second caller to arrive while the first trains
        return trained_once.save(folder, write_model, {"fingerprint": "f1"})

    results = []
    threads = [threading.Thread(target=lambda: results.append(
        trained_once.ensure(folder, "f1", slow_train, announce=lambda line: None))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and sorted(results) == [False, True]


HOLDER = r"""
import pathlib, sys, time
from behind_pipeline import trained_once
folder, log, locked, release = map(pathlib.Path, sys.argv[1:5])
with trained_once.training_lock(folder):
    log.write_text("fine-tuning MiniLM: 10/158\r")
    locked.touch()
    while not release.exists():
        time.sleep(0.02)
    if sys.argv[5] == "write":
        folder.mkdir(parents=True, exist_ok=True)
        (folder / trained_once.WEIGHTS_FILE).write_bytes(b"weights")
    with log.open("a") as more:
        more.write("fine-tuning MiniLM: 158/158\n")
"""


@pytest.fixture
def hold_lock(tmp_path):
    """Start another process holding the training lock of a folder (as `make lab`'s background training does)
    until the file ``release`` appears; then it writes the weights (or not) and a last log line, and lets go.
    Whatever a test does, no holder outlives it."""
    import select
    import subprocess
    import sys

    holders = []

    def start(folder, writes_weights=True):
        paths_ = [folder, tmp_path / "prepare-lab.log", tmp_path / "locked", tmp_path / "release"]
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, paths_),
                                   "write" if writes_weights else "none"])
        holders.append(holder)
        while not paths_[2].exists():
            assert holder.poll() is None, "the lock holder died"
            select.select([], [], [], 0.02)  # a pause that tests patching time.sleep leave alone
        return holder, paths_[1], paths_[3]

    yield start
    for holder in holders:
        holder.kill()
        holder.wait()


def test_is_training_sees_another_processs_lock_only_while_it_is_held(tmp_path, hold_lock):
    folder = tmp_path / "model"
    assert not trained_once.is_training(folder)  # no lock file yet
    holder, _, release = hold_lock(folder)
    assert trained_once.is_training(folder)
    release.touch()
    holder.wait()
    assert not trained_once.is_training(folder)


def test_is_training_ignores_this_processs_own_lock(tmp_path):
    # waiting for one's own lock would never end (classifier_id inside a training of the classifier)
    folder = tmp_path / "model"
    with trained_once.training_lock(folder):
        assert not trained_once.is_training(folder)


class FakeTraining:
    """Stands in for `python -m behind_pipeline.prepare` in a child process: prints a log and writes the weights,
    or (``trains=False``) finds them written by the training it waited for, as the real one does."""

    def __init__(self, folder, returncode=0, trains=True):
        self.folder, self.returncode, self.trains, self.commands = folder, returncode, trains, []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        if self.returncode == 0 and self.trains:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / trained_once.WEIGHTS_FILE).write_bytes(b"weights")
            self.stdout = iter(["training minilm-rotten-tomatoes once ...\n", "step 10/158\n"])
        elif self.returncode == 0:
            self.stdout = iter(["classifier in .cache/models/minilm-rotten-tomatoes is current: nothing to do\n"])
        else:
            self.stdout = iter(["training minilm-rotten-tomatoes once ...\n", "step 10/158\n", "Traceback ...\n"])
        return self

    def poll(self):
        return self.returncode


@pytest.fixture
def offline_classifier(tmp_path, monkeypatch):
    """The course classifier's folder moved into tmp_path, offline, no override: what classifier_id() reads."""
    from behind_pipeline import paths

    folder = tmp_path / "minilm-rotten-tomatoes"
    monkeypatch.setattr(paths, "CLASSIFIER_DIR", folder)
    monkeypatch.delenv("BTP_CLASSIFIER_ID", raising=False)
    monkeypatch.delenv("BTP_ONLINE", raising=False)
    return folder


def test_the_classifier_is_trained_in_a_child_process_on_first_need(offline_classifier, monkeypatch, capsys):
    import subprocess

    from behind_pipeline import models

    training = FakeTraining(offline_classifier)
    monkeypatch.setattr(subprocess, "Popen", training)
    assert models.classifier_id() == str(offline_classifier)
    assert [command[-2:] for command in training.commands] == [["-m", "behind_pipeline.prepare"]]
    assert "step 10/158" in capsys.readouterr().out  # the learner sees the training's progress
    assert models.classifier_id() == str(offline_classifier)  # trained: no second child
    assert len(training.commands) == 1


def test_a_cell_waits_for_a_training_that_started_elsewhere_and_shows_its_log(offline_classifier, hold_lock,
                                                                              monkeypatch, capsys):
    """No weights yet and `make lab`'s training holds the lock: the child waits for it (and trains nothing), and the
    cell shows the background training's log as it grows, to its last line."""
    import subprocess
    import time

    from behind_pipeline import models

    holder, log, release = hold_lock(offline_classifier)
    monkeypatch.setattr(models, "LAB_TRAINING_LOG", log)
    child = FakeTraining(offline_classifier, trains=False)
    monkeypatch.setattr(subprocess, "Popen", child)
    real_sleep = time.sleep

    def sleep_and_release(seconds):  # the background training ends once the cell has waited one poll
        release.touch()
        real_sleep(0.05)

    monkeypatch.setattr(time, "sleep", sleep_and_release)
    assert models.classifier_id() == str(offline_classifier)
    holder.wait()
    out = capsys.readouterr().out
    assert "10/158" in out and "158/158" in out and "is current" in out
    assert len(child.commands) == 1


def test_with_weights_a_cell_waits_for_the_lock_holder_without_a_child(offline_classifier, hold_lock, monkeypatch,
                                                                      capsys):
    import subprocess
    import time

    from behind_pipeline import models

    offline_classifier.mkdir(parents=True)
    (offline_classifier / trained_once.WEIGHTS_FILE).write_bytes(b"old weights")  # a retraining, or a check
    holder, log, release = hold_lock(offline_classifier)
    monkeypatch.setattr(models, "LAB_TRAINING_LOG", log)
    child = FakeTraining(offline_classifier)
    monkeypatch.setattr(subprocess, "Popen", child)
    monkeypatch.setattr(time, "sleep", lambda seconds: release.touch())
    assert models.classifier_id() == str(offline_classifier)
    holder.wait()
    out = capsys.readouterr().out
    assert "Waiting for the course classifier" in out and "158/158" in out
    assert child.commands == []


def test_a_stale_lab_log_is_not_shown(offline_classifier, tmp_path, monkeypatch, capsys):
    import os
    import subprocess

    from behind_pipeline import models

    log = tmp_path / "prepare-lab.log"
    log.write_text("an earlier make lab's training: 158/158\n")
    os.utime(log, (0, 0))  # written long ago
    monkeypatch.setattr(models, "LAB_TRAINING_LOG", log)
    monkeypatch.setattr(subprocess, "Popen", FakeTraining(offline_classifier))
    models.classifier_id()
    out = capsys.readouterr().out
    assert "step 10/158" in out and "earlier" not in out


def test_a_failed_first_need_training_says_so_with_its_log(offline_classifier, monkeypatch):
    import subprocess

    from behind_pipeline import models

    monkeypatch.setattr(subprocess, "Popen", FakeTraining(offline_classifier, returncode=1))
    with pytest.raises(RuntimeError, match="(?s)make prepare.*step 10/158"):
        models.classifier_id()
