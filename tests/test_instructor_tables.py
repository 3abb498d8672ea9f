"""tools/instructor_tables.py: the classroom pages' tables are current, and --check notices when they are not."""

import json
import shutil

import nbformat
import pytest

import instructor_tables
from notebook_files import ROOT


def test_the_pages_tables_are_current(capsys):
    assert instructor_tables.main(["--check"]) == 0, capsys.readouterr().out


@pytest.fixture
def book_copy(tmp_path):
    """The two pages and the run times, copied, so a test can make them stale."""
    for page in ("instructors.md", "learners.md"):
        shutil.copy(ROOT / "book" / page, tmp_path / page)
    shutil.copy(ROOT / "results" / "runtimes.json", tmp_path / "runtimes.json")
    return tmp_path


def check(folder) -> int:
    return instructor_tables.main(["--check", "--book", str(folder), "--runtimes", str(folder / "runtimes.json")])


def test_check_fails_when_a_run_time_changes_and_the_rewrite_fixes_it(book_copy):
    assert check(book_copy) == 0
    runtimes = json.loads((book_copy / "runtimes.json").read_text())
    runtimes["notebooks/01_tokenizer.ipynb"] = runtimes.get("notebooks/01_tokenizer.ipynb", 0) + 100.0
    (book_copy / "runtimes.json").write_text(json.dumps(runtimes))
    before = (book_copy / "instructors.md").read_text()
    assert check(book_copy) == 1
    assert (book_copy / "instructors.md").read_text() == before  # --check writes nothing
    arguments = ["--book", str(book_copy), "--runtimes", str(book_copy / "runtimes.json")]
    assert instructor_tables.main(arguments) == 0
    assert check(book_copy) == 0
    assert (book_copy / "instructors.md").read_text() != before


def test_check_fails_when_a_table_is_edited_by_hand(book_copy):
    page = book_copy / "learners.md"
    text = page.read_text()
    start = text.index("<!-- chapter-times:start -->")
    row = text.index("| 1 |", start)
    page.write_text(text[:row] + "| 1 | typed by hand |\n" + text[row:])
    assert check(book_copy) == 1


def test_check_fails_when_the_markers_are_gone(book_copy):
    page = book_copy / "instructors.md"
    page.write_text(page.read_text().replace("<!-- objectives:start -->", ""))
    assert check(book_copy) == 1


def test_objectives_are_the_chapters_own_bullets():
    chapters = {chapter["stem"]: chapter for chapter in instructor_tables.chapters()}
    tokenizer = chapters["01_tokenizer"]
    assert tokenizer["title"] == "Tokenizer" and len(tokenizer["bullets"]) >= 3
    # Each bullet is the chapter's own text, re-flowed onto one line.
    first_cell = nbformat.read(ROOT / "notebooks" / "01_tokenizer.ipynb", as_version=4).cells[0].source
    flowed = " ".join(first_cell.split())
    assert all(f"- {bullet}" in flowed for bullet in tokenizer["bullets"])
    assert "Runs in about" not in " ".join(tokenizer["bullets"])  # the list ends where the bullets end
