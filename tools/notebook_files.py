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


def unexpected_errors(path: Path) -> list[str]:
    """Stored error outputs in cells not tagged ``raises-exception`` (pitfall cells raise on purpose)."""
    import nbformat

    found = []
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type != "code" or "raises-exception" in cell.metadata.get("tags", []):
            continue
        if any(output.output_type == "error" for output in cell.outputs):
            found.append(f"{path.relative_to(ROOT)} cell {index}: stored error output")
    return found
