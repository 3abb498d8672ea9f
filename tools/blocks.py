"""The one renderer of generated blocks: the lines between `<!-- NAME:start -->` and `<!-- NAME:end -->`.

Every table the book renders from a results file (README, book pages, CONTRIBUTING) goes through ``update``:
it rewrites the blocks of one file, or with ``check`` only compares them, and names what is stale. A file that
lost a block's markers cannot be rendered: that is reported in both modes, and every tool exits 1 on it.

    >>> render("a\\n<!-- t:start -->\\nold\\n<!-- t:end -->\\nb", {"t": ["new"]})
    'a\\n<!-- t:start -->\\nnew\\n<!-- t:end -->\\nb'
"""

import re
from pathlib import Path

from behind_pipeline.paths import PROJECT_ROOT as ROOT  # the one definition of the project root


class MissingMarkers(ValueError):
    """A file has no `<!-- NAME:start -->` ... `<!-- NAME:end -->` pair for a block it should hold."""


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def render(text: str, blocks: dict[str, list[str]]) -> str:
    """``text`` with each named block replaced by its lines; raises MissingMarkers for a block not in ``text``."""
    for name, lines in blocks.items():
        start, end = markers(name)
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), flags=re.DOTALL)
        if not pattern.search(text):
            raise MissingMarkers(f"no {start} ... {end} markers")
        block = "\n".join([start, *lines, end])
        text = pattern.sub(lambda _, block=block: block, text)
    return text


def update(path: Path, blocks: dict[str, list[str]], check: bool) -> list[str]:
    """Rewrite the blocks of ``path`` (or only compare them, with ``check``); return what was stale, named."""
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    text = path.read_text() if path.exists() else ""
    try:
        rendered = render(text, blocks)
    except MissingMarkers as error:
        return [f"{shown}: {error}"]
    if rendered == text:
        return []
    if not check:
        path.write_text(rendered)
    return [f"{shown}: {', '.join(blocks)} out of date"]


def exit_status(stale: list[str], check: bool) -> int:
    """1 when checking and something is stale, or in any mode when a file lost its markers."""
    return 1 if stale and (check or any("markers" in line for line in stale)) else 0
