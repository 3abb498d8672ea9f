"""The chapter map in CONTRIBUTING.md is complete, current, and names only files that exist."""

import chapter_map
from blocks import ROOT

PACKAGE = ROOT / "behind_pipeline"


def test_every_listed_file_exists():
    missing = [path for path in chapter_map.listed_paths() if not (ROOT / path).exists()]
    assert not missing, f"the chapter map names files that do not exist: {missing}"


def test_every_chapter_notebook_is_on_the_map():
    stems = {path.stem for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert stems == set(chapter_map.TEACHES), "add the chapter to TEACHES in tools/chapter_map.py"


def test_every_package_module_belongs_to_a_chapter_or_the_foundation():
    listed = {f"behind_pipeline/{m}" for modules in chapter_map.TEACHES.values() for m in modules}
    listed |= {f"behind_pipeline/{m}" for m in chapter_map.FOUNDATION}
    checkers = (chapter_map.files(stem).get("checker") for stem in chapter_map.TEACHES)
    listed |= {checker for checker in checkers if checker}  # chapter 0 has none
    orphans = [str(path.relative_to(ROOT)) for path in sorted(PACKAGE.rglob("*.py"))
               if str(path.relative_to(ROOT)) not in listed
               and not any(str(path.relative_to(ROOT)).startswith(folder) for folder in listed if folder.endswith("/"))]
    assert not orphans, f"modules on no chapter of tools/chapter_map.py: {orphans}"


def test_the_rendered_map_is_current():
    assert chapter_map.main(["--check"]) == 0, "run `python tools/chapter_map.py`"


def test_a_missing_file_fails_the_check(monkeypatch):
    monkeypatch.setitem(chapter_map.TEACHES, "01_tokenizer", ["no_such_module.py"])
    assert chapter_map.main(["--check"]) == 1
