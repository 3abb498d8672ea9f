"""Models trained once: one summary file, one freshness rule, one lock and one atomic save for all three.

The book trains three models once and loads them like Hub checkpoints: the course classifier (``prepare.py``,
chapters 0-7 and later), the tiny generator (``tiny_gpt.py``, chapter 8, trained once by an author and shipped,
because another kind of CPU trains other weights) and the ticket router (``capstone/``, chapter 19). Each lives in
a folder of ``.cache/models`` written by ``save_pretrained``, with ``training_summary.json`` beside the weights.
The summary's fingerprint hashes what shapes the weights:

- the training settings (learning rate, batch size, seed, ...),
- the training data (a digest of the texts and labels the model was trained on),
- the versions of the libraries that compute the weights (torch, transformers, tokenizers; not for the shipped
  generator, whose files are fixed: ``tiny_gpt.fingerprint``),
- a recipe number, raised by hand when a change to the training code changes what the model learns.

Moving, renaming or re-wording code changes none of these, so a refactor never retrains a model. A change that
does alter the weights shows up in the tests that compare a model with its summary and golden files
(``tests/test_foundation.py``, ``tests/test_ch19_capstone.py``); raise the recipe number then.

    >>> fingerprint(recipe=1, settings={"seed": 0}, data="abc", versions={"torch": "2.13.0"})
    '7fed1ec1b59cb914'
"""

import contextlib
import fcntl
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

SUMMARY_FILE = "training_summary.json"
WEIGHTS_FILE = "model.safetensors"
# The libraries whose arithmetic (torch) or input ids (tokenizers, transformers' model code) shape the weights.
SHAPING_LIBRARIES = ("torch", "transformers", "tokenizers")


def library_versions(names: Iterable[str] = SHAPING_LIBRARIES) -> dict[str, str]:
    """The installed version of each library that shapes the weights, e.g. ``{"torch": "2.13.0", ...}``."""
    from importlib.metadata import version

    return {name: version(name) for name in names}


def data_digest(*columns: Iterable) -> str:
    """A digest of the training data, column by column (texts, labels): any changed, added or moved row changes it."""
    digest = hashlib.sha256()
    for column in columns:
        digest.update(json.dumps(list(column), ensure_ascii=False).encode())
        digest.update(b"\x00")  # where one column ends: ([a, b], [c]) and ([a], [b, c]) differ
    return digest.hexdigest()[:16]


def fingerprint(recipe: int, settings: dict, data: str, versions: dict[str, str] | None = None) -> str:
    """16 hex digits over the recipe number, the settings, the data digest and the library versions."""
    versions = library_versions() if versions is None else versions
    parts = {"recipe": recipe, "settings": settings, "data": data, "versions": versions}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def read_summary(folder: Path) -> dict | None:
    """The summary saved beside a model's weights, or None when the folder holds no complete model."""
    summary = Path(folder) / SUMMARY_FILE
    if not (Path(folder) / WEIGHTS_FILE).exists() or not summary.exists():
        return None
    return json.loads(summary.read_text())


def is_current(folder: Path, wanted: str) -> bool:
    """True when the folder holds a complete model whose summary has the fingerprint ``wanted``."""
    summary = read_summary(folder)
    return summary is not None and summary.get("fingerprint") == wanted


_HELD_HERE: set[Path] = set()  # lock files this process holds: is_training never reports its own lock


def _lock_path(folder: Path) -> Path:
    return Path(folder).with_name(Path(folder).name + ".lock").resolve()


@contextlib.contextmanager
def training_lock(folder: Path) -> Iterator[None]:
    """One trainer per folder: a second process (two `make` runs, a notebook and a test) waits, then finds the
    model current instead of training it again beside the first."""
    lock_path = _lock_path(folder)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _HELD_HERE.add(lock_path)
        try:
            yield
        finally:
            _HELD_HERE.discard(lock_path)
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_training(folder: Path) -> bool:
    """True while another process holds :func:`training_lock` for ``folder`` (a training, or a freshness check that
    may turn into one): a reader should wait for it rather than load the folder. False for a lock this process
    holds itself: waiting for it would never end."""
    lock_path = _lock_path(folder)
    if not lock_path.exists() or lock_path in _HELD_HERE:
        return False
    with open(lock_path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def save(folder: Path, write_files: Callable[[Path], None], summary: dict) -> dict:
    """Write a model into ``folder`` at once: ``write_files(partial)`` fills a sibling ``.partial`` folder (weights,
    tokenizer), the summary goes beside them, and only then does the folder replace the old one, so a reader never
    sees half a model."""
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_files(partial)
    (partial / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return summary


def ensure(folder: Path, wanted: str, train: Callable[[], dict], announce: Callable[[str], None] = print) -> bool:
    """Train (``train()`` saves the model with :func:`save`) unless the folder already holds the model ``wanted``.

    Returns True when it trained. Holds :func:`training_lock` while it checks and trains, so concurrent callers
    train once. When the model is current, the summary is touched: newer than the sources, so `make` stops asking.
    """
    folder = Path(folder)
    with training_lock(folder):
        if is_current(folder, wanted):
            (folder / SUMMARY_FILE).touch()
            return False
        announce(f"training {folder.name} once (its summary is missing or its fingerprint changed) ...")
        train()
        if not is_current(folder, wanted):
            raise RuntimeError(f"training wrote no model with fingerprint {wanted} into {folder}")
        return True
