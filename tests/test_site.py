"""The website's checks (tools/check_site.py), each shown passing on a small synthetic site and failing on the
mistake it exists for; and the rules the site relies on: notebook code fits 88 columns, rendered blocks are
current. Fast: no book build, no browser (``make test-site`` and ``make browser`` run those on the real site)."""

import sys
from pathlib import Path

import check_site
import nbformat
import pytest
from chapter_table import pinned, render_site

from notebook_files import ROOT, notebooks

CODE_WIDTH = 88  # columns of notebook code the article shows without scrolling at 1280 px (book/_static/wide.css)

MATHJAX = '<script defer="defer" src="../_static/mathjax/tex-chtml.js"></script>'


def page(body: str, head: str = "") -> str:
    return f"<!DOCTYPE html><html><head>{head}</head><body><article>{body}</article></body></html>"


def make_site(tmp_path: Path, files: dict[str, str]) -> Path:
    site = tmp_path / "html"
    for name, text in files.items():
        path = site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return site


# --- no external resources -------------------------------------------------------------------------------------


def test_external_check_accepts_local_resources_and_links_to_the_web(tmp_path):
    site = make_site(tmp_path, {
        "book/a.html": page('<a href="https://huggingface.co/docs">docs</a><img alt="x" src="../_images/f.png">',
                            head='<link rel="stylesheet" href="../_static/wide.css">' + MATHJAX),
        "_static/wide.css": "pre { white-space: pre-wrap; } .x { background: url(img/local.png); }",
    })
    assert check_site.external_resources(site) == []


@pytest.mark.parametrize("resource", [
    '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>',
    '<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Lato">',
    '<link rel="preload" as="font" href="http://example.org/font.woff2">',
    '<img alt="a figure" src="https://example.org/figure.png">',
    '<img alt="a figure" src="local.png" srcset="local.png 1x, https://example.org/big.png 2x">',
    '<iframe src="https://www.youtube.com/embed/x"></iframe>',
    '<div style="background-image: url(\'https://example.org/bg.png\')"></div>',
    '<style>@import url("https://fonts.googleapis.com/css2?family=Inter");</style>',
], ids=["cdn-script", "protocol-relative-css", "font", "image", "srcset", "iframe", "inline-style", "style-import"])
def test_external_check_fails_on_each_kind_of_external_resource(tmp_path, resource):
    site = make_site(tmp_path, {"index.html": page(resource)})
    assert len(check_site.external_resources(site)) == 1


def test_external_check_reads_stylesheets_too(tmp_path):
    site = make_site(tmp_path, {"index.html": page("ok"),
                                "_static/theme.css": '@font-face { src: url("https://example.org/f.woff2"); }'})
    assert check_site.external_resources(site) == ["_static/theme.css: url(\"https://"]


# --- internal links and anchors --------------------------------------------------------------------------------


def test_link_check_accepts_links_that_resolve(tmp_path):
    site = make_site(tmp_path, {
        "index.html": page('<a href="book/glossary.html#term-logits">logits</a><a href="#top">top</a>'
                           '<a href="book/">folder</a><a href="mailto:someone@example.org">mail</a>'
                           '<a href="https://example.org/missing.html">web</a>', head='<a id="top"></a>'),
        "book/glossary.html": page('<dt id="term-logits">logits</dt>'),
        "book/index.html": page("a folder's index"),
    })
    assert check_site.broken_links(site) == []


@pytest.mark.parametrize("link, expected", [
    ('<a href="book/missing.html">x</a>', "missing file"),
    ('<a href="book/glossary.html#term-softmax">x</a>', "no element with id 'term-softmax'"),
    ('<a href="#nowhere">x</a>', "no element with id 'nowhere'"),
    ('<img alt="x" src="_images/missing.png">', "missing file"),
    ('<script src="_static/missing.js"></script>', "missing file"),
    ('<a href="../outside.html">x</a>', "missing file"),
], ids=["missing-page", "missing-anchor", "missing-anchor-same-page", "missing-image", "missing-script", "outside"])
def test_link_check_fails_on_each_broken_link(tmp_path, link, expected):
    (tmp_path / "outside.html").write_text("outside the site")
    site = make_site(tmp_path, {"index.html": page(link), "book/glossary.html": page('<dt id="term-logits"></dt>')})
    problems = check_site.broken_links(site)
    assert len(problems) == 1 and expected in problems[0]


# --- notebooks rendered with their outputs ---------------------------------------------------------------------


def book_with_notebook(tmp_path: Path, outputs_per_cell: list[int], tags=None) -> Path:
    """A book root with _toc.yml naming notebooks/01_x and the notebook itself."""
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/01_x\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 1. X: y")]
    for count in outputs_per_cell:
        cell = nbformat.v4.new_code_cell("print(1)")
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n") for _ in range(count)]
        cell.metadata["tags"] = list(tags or [])
        nb.cells.append(cell)
    nbformat.write(nb, root / "notebooks" / "01_x.ipynb")
    return root


OUTPUT = '<div class="cell docutils container"><div class="cell_output docutils container"><pre>1</pre></div></div>'


def test_outputs_check_accepts_a_page_with_every_output(tmp_path):
    root = book_with_notebook(tmp_path, [1, 2, 0])
    site = make_site(tmp_path, {"notebooks/01_x.html": page(OUTPUT * 2)})
    assert check_site.missing_outputs(site, root) == []


def test_outputs_check_fails_when_a_page_lost_an_output(tmp_path):
    root = book_with_notebook(tmp_path, [1, 1])
    site = make_site(tmp_path, {"notebooks/01_x.html": page(OUTPUT)})
    assert check_site.missing_outputs(site, root) == [
        "notebooks/01_x.html shows 1 output areas; notebooks/01_x.ipynb has 2 code cells with outputs"]


def test_outputs_check_fails_when_a_page_shows_no_outputs_at_all(tmp_path):
    """What a site built with outputs stripped (or re-executed into nothing) looks like."""
    root = book_with_notebook(tmp_path, [1])
    site = make_site(tmp_path, {"notebooks/01_x.html": page('<div class="cell_input">print(1)</div>')})
    assert len(check_site.missing_outputs(site, root)) == 1


def test_outputs_check_fails_when_a_toc_notebook_has_no_page(tmp_path):
    root = book_with_notebook(tmp_path, [1])
    site = make_site(tmp_path, {"index.html": page("")})
    assert check_site.missing_outputs(site, root) == ["notebooks/01_x.ipynb is in _toc.yml but notebooks/01_x.html "
                                                      "was not built"]


def test_outputs_check_does_not_count_outputs_the_book_removes_on_purpose(tmp_path):
    root = book_with_notebook(tmp_path, [1], tags=["remove-output"])
    site = make_site(tmp_path, {"notebooks/01_x.html": page("")})
    assert check_site.missing_outputs(site, root) == []


# --- images, math, exercises, downloads ------------------------------------------------------------------------


@pytest.mark.parametrize("image, problems", [
    ('<img alt="Two reliability diagrams" src="f.png">', 0),
    ('<img src="f.png">', 1),
    ('<img alt="" src="f.png">', 1),
    ('<img alt="   " src="f.png">', 1),
], ids=["alt", "no-alt", "empty-alt", "blank-alt"])
def test_alt_check(tmp_path, image, problems):
    site = make_site(tmp_path, {"index.html": page(image), "f.png": ""})
    assert len(check_site.images_without_alt(site)) == problems


MATH = '<span class="math notranslate nohighlight">\\(e^{z_i}\\)</span>'


def test_math_check_accepts_math_with_the_local_mathjax(tmp_path):
    site = make_site(tmp_path, {"book/a.html": page(MATH, head=MATHJAX), "book/b.html": page("no math"),
                                "_static/mathjax/tex-chtml.js": "// MathJax"})
    assert check_site.math_not_local(site) == []


@pytest.mark.parametrize("head", [
    "",
    '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>',
    '<script src="../_static/mathjax/missing.js"></script>',
], ids=["no-mathjax", "mathjax-from-a-cdn", "mathjax-file-missing"])
def test_math_check_fails_without_the_local_mathjax(tmp_path, head):
    site = make_site(tmp_path, {"book/a.html": page(MATH, head=head), "_static/mathjax/tex-chtml.js": ""})
    assert check_site.math_not_local(site) == ["book/a.html: has math but loads no MathJax script from the site"]


def test_math_check_fails_when_no_page_has_math(tmp_path):
    """A site whose math stopped being marked up (a lost MyST extension) would otherwise pass vacuously."""
    site = make_site(tmp_path, {"index.html": page("$e^x$ left as text", head=MATHJAX)})
    assert len(check_site.math_not_local(site)) == 1


def chapter_with_exercises(tmp_path: Path) -> Path:
    root = book_with_notebook(tmp_path, [1])
    (root / "exercises").mkdir()
    nbformat.write(nbformat.v4.new_notebook(), root / "exercises" / "01_x_exercises.ipynb")
    (root / "_toc.yml").write_text((root / "_toc.yml").read_text() + "  - glob: exercises/*\n")
    return root


def test_exercise_link_check(tmp_path):
    root = chapter_with_exercises(tmp_path)
    linked = make_site(tmp_path / "a", {"notebooks/01_x.html": page('<a href="../exercises/01_x_exercises.html">'
                                                                    'exercises</a>')})
    assert check_site.missing_exercise_links(linked, root) == []
    unlinked = make_site(tmp_path / "b", {"notebooks/01_x.html": page('<a href="../exercises/">exercises</a>')})
    assert check_site.missing_exercise_links(unlinked, root) == [
        "notebooks/01_x.html does not link its exercises, exercises/01_x_exercises.html"]


def test_download_check(tmp_path):
    root = book_with_notebook(tmp_path, [1])
    button = '<a href="../_sources/notebooks/01_x.ipynb" class="btn-download-source-button">.ipynb</a>'
    offered = make_site(tmp_path / "a", {"notebooks/01_x.html": page(button), "_sources/notebooks/01_x.ipynb": "{}"})
    assert check_site.missing_downloads(offered, root) == []
    no_button = make_site(tmp_path / "b", {"notebooks/01_x.html": page(""), "_sources/notebooks/01_x.ipynb": "{}"})
    assert len(check_site.missing_downloads(no_button, root)) == 1
    no_file = make_site(tmp_path / "c", {"notebooks/01_x.html": page(button)})
    assert len(check_site.missing_downloads(no_file, root)) == 1


def test_theme_fragments_in_static_are_not_pages(tmp_path):
    site = make_site(tmp_path, {"index.html": page(""),
                                "_static/webpack-macros.html": "<link href=\"{{ pathto('x.css', 1) }}\">"})
    assert check_site.pages(site) == [site / "index.html"]


# --- what the site relies on -----------------------------------------------------------------------------------


def test_the_toc_lists_every_chapter_with_its_exercises_and_solutions():
    """Every notebook of the book is a page: a chapter that exists but is missing from _toc.yml is caught here."""
    docs = set(check_site.toc_files())
    in_toc = {f"{p.parent.name}/{p.stem}" for p in notebooks()}
    missing = sorted(in_toc - docs)
    assert not missing, f"add to _toc.yml: {missing}"


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_code_fits_the_page(path):
    """Code lines of at most 88 columns show without a sideways scroll bar on the website at 1280 px."""
    long_lines = [f"cell {index}: {len(line)} columns: {line[:60]}..."
                  for index, cell in enumerate(nbformat.read(path, as_version=4).cells) if cell.cell_type == "code"
                  for line in cell.source.splitlines() if len(line) > CODE_WIDTH]
    assert not long_lines, "\n".join(long_lines)


def test_rendered_site_blocks_are_current():
    """The landing page's chapter table, the troubleshooting costs, the versions page and the footer."""
    assert render_site(check=True) == []


def test_versions_page_lists_every_pin():
    pins = [line.split("==")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.lstrip().startswith("#")]
    assert [name for _, name, _ in pinned()] == pins
    versions = (ROOT / "book" / "versions.md").read_text()
    assert all(f"`{name}`" in versions for name in pins)


def test_browser_check_photographs_one_chapter_per_part():
    from browser_check import parts

    found = parts()
    assert {"Part I: Behind the pipeline", "Part II: Fine-tuning"} <= set(found)
    assert all(docs and all(doc.startswith("notebooks/") for doc in docs) for docs in found.values())


def test_site_extension_drops_only_thebe_scripts():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from btp_site import _is_thebe

    class Script:
        def __init__(self, filename, body=""):
            self.filename, self.attributes = filename, {"body": body} if body else {}

    assert _is_thebe(Script(None, 'const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js"'))
    assert _is_thebe(Script("_static/sphinx-thebe.js"))
    assert not _is_thebe(Script("_static/mathjax/tex-chtml.js"))
    assert not _is_thebe(Script(None, "document.documentElement.dataset.mode = 'auto'"))


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium here (`make browser` installs it)")
def test_browser_check_fails_on_what_a_reader_would_see(tmp_path, capsys):
    """The real-browser check, on a two-page site: a clean page passes; each fault of the other page is reported."""
    from browser_check import main

    good = page('<div class="cell"><div class="cell_input"><pre>print("short")</pre></div>'
                '<div class="cell_output"><pre>short</pre></div></div>')
    bad = page('<div class="cell"><div class="cell_input"><pre style="white-space: pre">'
               + "x = 1  # " + "a long line " * 20 + "</pre></div></div>"
               + '<img alt="missing" src="missing.png">'
               + '<div class="table-wrapper" style="overflow-x: auto"><table><tr>'
               + "<td style='white-space: nowrap'>a column far too wide</td>" * 40 + "</tr></table></div>"
               + '<span class="math">\\(x^2\\)</span>'
               + "<script>console.error('broken on purpose')</script>")
    no_icon = '<link rel="icon" href="data:,">'  # else the browser asks the server for /favicon.ico (a 404)
    site = make_site(tmp_path, {"index.html": good.replace("<head>", "<head>" + no_icon),
                                "book/bad.html": bad.replace("<head>", "<head>" + no_icon)})
    assert main([str(site), "--screenshots", str(tmp_path / "shots")]) == 1
    printed = capsys.readouterr().out
    assert "book/bad.html: cell 0: <pre" in printed and "scrolls sideways" in printed
    assert "book/bad.html: image not loaded: missing.png" in printed
    assert "book/bad.html: outside a cell: <table> scrolls sideways" in printed
    assert "book/bad.html: 1 math elements, but MathJax rendered none" in printed
    assert "broken on purpose" in printed
    assert not [line for line in printed.splitlines() if line.startswith("index.html:") and "screenshots" not in line]
    assert (tmp_path / "shots" / "landing.png").exists()


def test_browser_check_fails_on_a_table_that_scrolls_and_only_notes_a_wide_formula():
    """What the browser measured, turned into problems and notes (no browser needed)."""
    from browser_check import findings

    clean = {"wide": [], "tables": [], "notes": [], "brokenImages": [], "mathElements": 0, "mjx": 0}
    assert findings("book/benchmark.html", clean) == ([], [])
    table = {"cell": -1, "scroll": 1400, "client": 760, "text": "variant accuracy macro-F1"}
    formula = {"tag": "mjx-container", "scroll": 900, "client": 760, "text": "a long sum"}
    problems, notes = findings("book/benchmark.html", {**clean, "tables": [table], "notes": [formula]})
    assert problems == ["book/benchmark.html: outside a cell: <table> scrolls sideways (1400 > 760 px): "
                        "'variant accuracy macro-F1'"]
    assert len(notes) == 1 and "mjx-container" in notes[0] and "not" not in problems[0].split(":")[0]
    in_cell = findings("notebooks/x.html", {**clean, "tables": [{**table, "cell": 3}]})[0]
    assert in_cell[0].startswith("notebooks/x.html: cell 3: <table>")
