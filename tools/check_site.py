"""The website's checks: its inputs before a build, and the built site (what a reader's browser would load).

    python tools/check_site.py --inputs              # before `make book`: the notebooks and rendered blocks
    python tools/check_site.py --offline _build/html # the last step of `make book`: nothing loaded from the web
    python tools/check_site.py _build/html           # `make test-site`: every check below

``--inputs`` refuses to build the site from inputs it would show wrong: a notebook that stores an error outside a
cell tagged ``raises-exception``, or a rendered block (the landing page's chapter table, the troubleshooting
costs, the versions page, the footer) out of date with results/ and requirements.txt.

Each check reads the HTML files of the site with the standard library's parser and returns one message per
problem (an empty list when the site passes):

- ``external_resources``: no page, stylesheet or script loads anything from the network (the src/href/srcset of
  scripts, stylesheets, fonts, images, iframes, media; ``url(...)`` and ``@import`` in CSS). Plain ``<a>`` links to
  the web are fine: the reader chooses to follow them.
- ``broken_links``: every internal link, image, script and stylesheet resolves to a file of the site, and every
  ``#anchor`` to an element with that id on the target page.
- ``missing_outputs``: each notebook of the table of contents is rendered with its stored outputs: its page has
  as many output areas as the notebook has code cells with outputs.
- ``images_without_alt``: every ``<img>`` has a non-empty ``alt``.
- ``math_not_local``: a page with math loads MathJax from the site itself (a local ``<script src>``), and the
  site's pages do hold math somewhere (so the check is not vacuous).
- ``missing_exercise_links`` and ``missing_downloads``: each chapter page links its exercise notebook's page, and
  each notebook page offers its ``.ipynb`` for download.

tests/test_site.py runs each check on small synthetic pages, so each can be seen to fail.
"""

import json
import posixpath
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from behind_pipeline.paths import PROJECT_ROOT as ROOT  # the one definition of the project root

# Attributes through which a browser fetches something by itself, per tag (``<a href>`` is not one of them).
FETCHING = {
    "script": ("src",), "link": ("href",), "img": ("src", "srcset"), "iframe": ("src",), "source": ("src", "srcset"),
    "video": ("src", "poster"), "audio": ("src",), "embed": ("src",), "object": ("data",), "track": ("src",),
    "image": ("href", "xlink:href"), "use": ("href", "xlink:href"),
}
# Links and anchors checked for resolving (fetching attributes plus the reader's own links).
LINKING = {**FETCHING, "a": ("href",)}
CSS_EXTERNAL = re.compile(r"(@import\s*(url\()?|url\()\s*[\"']?\s*(https?:)?//", re.IGNORECASE)
EXTERNAL = re.compile(r"^\s*((https?|ftp|wss?):)?//", re.IGNORECASE)
NOT_A_FILE = re.compile(r"^\s*(mailto|tel|javascript|data|about|blob):", re.IGNORECASE)
OUTPUT_AREA = "cell_output"
HIDDEN_OUTPUT_TAGS = {"remove-output", "remove_output", "remove-cell", "remove_cell"}


class Page(HTMLParser):
    """The parts of one HTML page the checks need."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []  # (tag, attributes) in document order
        self.ids: set[str] = set()
        self.styles: list[str] = []  # <style> contents and style="" attributes
        self._in_style = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = {name: (value or "") for name, value in attrs}
        self.elements.append((tag, attributes))
        for key in ("id", "name") if tag == "a" else ("id",):
            if attributes.get(key):
                self.ids.add(attributes[key])
        if attributes.get("style"):
            self.styles.append(attributes["style"])
        self._in_style = tag == "style"

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)

    def with_class(self, name: str) -> list[tuple[str, dict[str, str]]]:
        return [(tag, a) for tag, a in self.elements if name in a.get("class", "").split()]


def pages(site: Path) -> list[Path]:
    """The site's pages; _static/ holds the themes' template fragments, not pages."""
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)


def _parse(path: Path, cache: dict) -> Page:
    if path not in cache:
        cache[path] = Page(path.read_text(errors="replace"))
    return cache[path]


def _urls(tag: str, attributes: dict[str, str], names: tuple[str, ...]) -> list[str]:
    found = []
    for name in names:
        value = attributes.get(name)
        if not value:
            continue
        if name == "srcset":
            found += [part.strip().split()[0] for part in value.split(",") if part.strip()]
        else:
            found.append(value)
    return found


def external_resources(site: Path, cache: dict | None = None) -> list[str]:
    cache = {} if cache is None else cache
    found = []
    for path in pages(site):
        page = _parse(path, cache)
        where = path.relative_to(site)
        for tag, attributes in page.elements:
            for url in _urls(tag, attributes, FETCHING.get(tag, ())):
                if EXTERNAL.match(url):
                    found.append(f"{where}: <{tag}> loads {url}")
        found += [f"{where}: inline style loads {m.group(0)}" for s in page.styles for m in CSS_EXTERNAL.finditer(s)]
    for path in sorted(p for p in site.rglob("*") if p.suffix == ".css"):
        text = path.read_text(errors="replace")
        found += [f"{path.relative_to(site)}: {m.group(0)}" for m in CSS_EXTERNAL.finditer(text)]
    return found


def resolve(site: Path, page: Path, url: str) -> tuple[Path | None, str]:
    """(file the URL points to, fragment) for an internal URL; (None, "") for one outside the site."""
    if EXTERNAL.match(url) or NOT_A_FILE.match(url):
        return None, ""
    parts = urlsplit(url)
    if parts.scheme:
        return None, ""
    if not parts.path:
        return page, unquote(parts.fragment)
    relative = posixpath.normpath(posixpath.join(page.parent.relative_to(site).as_posix(), unquote(parts.path)))
    target = site / relative
    if parts.path.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


def broken_links(site: Path, cache: dict | None = None) -> list[str]:
    cache = {} if cache is None else cache
    found = []
    for path in pages(site):
        where = path.relative_to(site)
        for tag, attributes in _parse(path, cache).elements:
            for url in _urls(tag, attributes, LINKING.get(tag, ())):
                target, fragment = resolve(site, path, url)
                if target is None:
                    continue
                inside = target.resolve().is_relative_to(site.resolve())
                if not inside or not target.is_file():
                    found.append(f"{where}: <{tag}> {url} points to a missing file")
                elif fragment and target.suffix == ".html" and fragment not in _parse(target, cache).ids:
                    found.append(f"{where}: <{tag}> {url}: no element with id {fragment!r} in "
                                 f"{target.relative_to(site)}")
    return found


def toc_files(root: Path = ROOT) -> list[str]:
    """Every document of _toc.yml (no suffix), its ``file:`` entries and the files its ``glob:`` entries match."""
    toc = (root / "_toc.yml").read_text()
    found = re.findall(r"^\s*-?\s*(?:file|root):\s*(\S+)", toc, flags=re.MULTILINE)
    for pattern in re.findall(r"^\s*-?\s*glob:\s*(\S+)", toc, flags=re.MULTILINE):
        found += sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob(pattern)
                        if p.suffix in {".ipynb", ".md"})
    return found


def toc_notebooks(root: Path = ROOT) -> list[str]:
    return [doc for doc in toc_files(root) if (root / f"{doc}.ipynb").exists()]


def cells_with_outputs(notebook: dict) -> int:
    count = 0
    for cell in notebook["cells"]:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if cell["cell_type"] == "code" and cell.get("outputs") and not tags & HIDDEN_OUTPUT_TAGS:
            count += 1
    return count


def missing_outputs(site: Path, root: Path = ROOT, cache: dict | None = None) -> list[str]:
    cache = {} if cache is None else cache
    found = []
    for doc in toc_notebooks(root):
        page = site / f"{doc}.html"
        if not page.exists():
            found.append(f"{doc}.ipynb is in _toc.yml but {doc}.html was not built")
            continue
        expected = cells_with_outputs(json.loads((root / f"{doc}.ipynb").read_text()))
        shown = len(_parse(page, cache).with_class(OUTPUT_AREA))
        if shown != expected:
            found.append(f"{doc}.html shows {shown} output areas; {doc}.ipynb has {expected} code cells with outputs")
    return found


def images_without_alt(site: Path, cache: dict | None = None) -> list[str]:
    cache = {} if cache is None else cache
    found = []
    for path in pages(site):
        for tag, attributes in _parse(path, cache).elements:
            if tag == "img" and not attributes.get("alt", "").strip():
                found.append(f"{path.relative_to(site)}: <img src={attributes.get('src', '')!r}> has no alt text")
    return found


def has_math(page: Page) -> bool:
    return bool(page.with_class("math"))


def local_mathjax(site: Path, path: Path, page: Page) -> bool:
    for tag, attributes in page.elements:
        src = attributes.get("src", "")
        if tag == "script" and "mathjax" in src.lower():
            target, _ = resolve(site, path, src)
            if target is not None and target.is_file():
                return True
    return False


def math_not_local(site: Path, cache: dict | None = None) -> list[str]:
    cache = {} if cache is None else cache
    found, with_math = [], 0
    for path in pages(site):
        page = _parse(path, cache)
        if has_math(page):
            with_math += 1
            if not local_mathjax(site, path, page):
                found.append(f"{path.relative_to(site)}: has math but loads no MathJax script from the site")
    if not with_math:
        found.append("no page of the site holds math (class=\"math\"): the math check would prove nothing")
    return found


def _links_to(site: Path, path: Path, page: Page, target: Path) -> bool:
    for tag, attributes in page.elements:
        if tag == "a" and attributes.get("href"):
            resolved, _ = resolve(site, path, attributes["href"])
            if resolved is not None and resolved.resolve() == target.resolve():
                return True
    return False


def missing_exercise_links(site: Path, root: Path = ROOT, cache: dict | None = None) -> list[str]:
    cache = {} if cache is None else cache
    found = []
    docs = set(toc_files(root))
    for doc in toc_notebooks(root):
        if not doc.startswith("notebooks/"):
            continue
        exercise = f"exercises/{Path(doc).name}_exercises"
        page = site / f"{doc}.html"
        if exercise in docs and page.exists() and not _links_to(site, page, _parse(page, cache),
                                                                 site / f"{exercise}.html"):
            found.append(f"{doc}.html does not link its exercises, {exercise}.html")
    return found


def missing_downloads(site: Path, root: Path = ROOT, cache: dict | None = None) -> list[str]:
    cache = {} if cache is None else cache
    found = []
    for doc in toc_notebooks(root):
        page = site / f"{doc}.html"
        if not page.exists():
            continue  # missing_outputs names it
        parsed = _parse(page, cache)
        source = site / "_sources" / f"{doc}.ipynb"
        if not _links_to(site, page, parsed, source) or not source.is_file():
            found.append(f"{doc}.html offers no download of {doc}.ipynb")
    return found


def run(site: Path, root: Path = ROOT) -> dict[str, list[str]]:
    cache: dict = {}
    return {
        "external resources": external_resources(site, cache),
        "broken internal links and anchors": broken_links(site, cache),
        "notebooks rendered without their outputs": missing_outputs(site, root, cache),
        "images without alt text": images_without_alt(site, cache),
        "math not rendered by the local MathJax": math_not_local(site, cache),
        "chapters not linking their exercises": missing_exercise_links(site, root, cache),
        "notebooks without a download link": missing_downloads(site, root, cache),
    }


def inputs() -> int:
    from chapter_table import render_site

    from notebook_files import notebooks, unexpected_errors

    errors = [error for path in notebooks() for error in unexpected_errors(path)]
    errors += [f"out of date: {stale} (run `python tools/chapter_table.py`)" for stale in render_site(check=True)]
    print("\n".join(errors) if errors else "no unexpected error outputs; rendered blocks current")
    return 1 if errors else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--inputs"]:
        return inputs()
    offline = argv[:1] == ["--offline"]
    argv = argv[1:] if offline else argv
    site = Path(argv[0]) if argv else ROOT / "_build" / "html"
    if not pages(site):
        print(f"no pages in {site}: run `make book` first")
        return 1
    if offline:
        found = external_resources(site)
        print("\n".join(found) if found else f"{len(pages(site))} pages, no external resources")
        return 1 if found else 0
    failed = 0
    for name, problems in run(site).items():
        print(f"{'FAIL' if problems else 'ok  '} {name}: {len(problems)}")
        for problem in problems[:50]:
            print(f"     {problem}")
        failed += bool(problems)
    print(f"{len(pages(site))} pages, {len(toc_notebooks())} notebooks in the table of contents")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
