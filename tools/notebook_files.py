"""The notebooks of the book, in one place for every tool: chapters, solutions and generated exercises."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED_FOLDERS = ("notebooks", "solutions")  # executed by nbval and compared
ALL_FOLDERS = CHECKED_FOLDERS + ("exercises",)


def notebooks(folders=ALL_FOLDERS) -> list[Path]:
    found = []
    for folder in folders:
        found += sorted(p for p in (ROOT / folder).glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    return found
