"""Refuse to build the site from inputs it would show wrong: a notebook that stores an error outside a cell tagged
``raises-exception``, or a rendered block (the landing page's chapter table, the troubleshooting costs, the
versions page, the footer) out of date with results/ and requirements.txt (``python tools/chapter_table.py``)."""

import sys

from chapter_table import render_site

from notebook_files import notebooks, unexpected_errors

if __name__ == "__main__":
    errors = [error for path in notebooks() for error in unexpected_errors(path)]
    errors += [f"out of date: {stale} (run `python tools/chapter_table.py`)" for stale in render_site(check=True)]
    print("\n".join(errors) if errors else "no unexpected error outputs; rendered blocks current")
    sys.exit(1 if errors else 0)
