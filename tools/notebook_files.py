"""The notebooks of the book, in one place for every tool: chapters, solutions and generated exercises."""

import fnmatch
import re
from pathlib import Path

from behind_pipeline.paths import PROJECT_ROOT as ROOT  # the one definition of the project root

CHECKED_FOLDERS = ("notebooks", "solutions", "book")  # executed by nbval and compared (book/: reference pages)
ALL_FOLDERS = CHECKED_FOLDERS + ("exercises",)
# A chapter's title line: "# 7. Other heads: one body, many tasks" gives number, title and subtitle.
TITLE = re.compile(r"^# (\d+)\. ([^:\n]+): ([^\n]+)$", re.MULTILINE)


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


def in_site(path: str) -> bool:
    """Whether the site builds ``path`` (no suffix): it exists, and a ``file:`` or ``glob:`` of _toc.yml names it."""
    if not any((ROOT / path).with_suffix(suffix).exists() for suffix in (".ipynb", ".md")):
        return False
    toc = (ROOT / "_toc.yml").read_text()
    files = re.findall(r"^\s*-?\s*file:\s*(\S+)", toc, flags=re.MULTILINE)
    globs = re.findall(r"^\s*-?\s*glob:\s*(\S+)", toc, flags=re.MULTILINE)
    return path in files or any(fnmatch.fnmatch(path, pattern) for pattern in globs)


def doc_link(path: str, text: str) -> str:
    """A link to a page of the site; plain text for one the site does not build (a broken link fails the build)."""
    return f"{{doc}}`{text} <../{path}>`" if in_site(path) else text


def about(seconds: float | None) -> str:
    if seconds is None:
        return "not measured yet"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
