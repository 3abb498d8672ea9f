"""The built website in a real browser: headless Chromium, driven through the DevTools protocol over a pipe.

    python tools/browser_check.py _build/html [--chromium /usr/bin/chromium] [--width 1280]

``make browser`` installs Debian's ``chromium`` when it is missing, then runs this. The site is served by Python's
``http.server`` on the loopback interface (as a reader's browser would get it from any static host), and Chromium
is started with ``--remote-debugging-pipe``: the DevTools protocol's JSON messages go through two file
descriptors, so no driver, no WebSocket library and no network port of the browser's own are needed.

On every page of the site, in a window 1280 pixels wide, it checks:
- no code cell or output scrolls sideways: each ``pre``, ``.highlight`` and ``.output`` element of the article has
  ``scrollWidth <= clientWidth`` (the offenders are printed: page, cell number, first characters);
- no table scrolls sideways either: a table outside code and outputs fails when its wrapper (or the table itself)
  has ``scrollWidth > clientWidth`` or the table is wider than the article (a reader would have to scroll to
  find its last columns);
- no console error (what Selenium calls SEVERE: ``console.error``, an uncaught exception, a failed load);
- no request leaves the local server (every URL the page asks for, scripts' own requests included);
- every image loaded (``naturalWidth > 0``);
- math rendered: a page with math (``class="math"``) holds MathJax's ``mjx-container`` elements.
Displayed formulas wider than the article are printed as notes (MathJax lets a reader scroll one; they do not fail
the check).
It saves screenshots of the landing page and of one chapter per part of the book (the first of each part that
shows a figure and math, else its first chapter) under ``_build/screenshots/``: the top of the page, its first
figure and its first displayed formula.
"""

import argparse
import fcntl
import functools
import http.server
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from base64 import b64decode
from pathlib import Path

from check_site import ROOT, Page, pages, toc_notebooks

SCREENSHOTS = ROOT / "_build" / "screenshots"
LOAD_TIMEOUT = 30.0  # seconds for a page and its MathJax; a page that takes longer is reported

# Runs in the page: the elements of the article that scroll sideways, and the state of images and math.
MEASURE = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  if (document.fonts && document.fonts.ready) { await document.fonts.ready; }
  const article = document.querySelector("article") || document.body;
  const cells = Array.from(article.querySelectorAll(".cell"));
  const wide = [];
  for (const el of article.querySelectorAll("pre, .highlight, .output")) {
    if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth) {
      const cell = el.closest(".cell");
      wide.push({cell: cell ? cells.indexOf(cell) : -1, tag: el.tagName.toLowerCase(),
                 cls: el.className, scroll: el.scrollWidth, client: el.clientWidth,
                 text: el.textContent.trim().split("\n")[0].slice(0, 70)});
    }
  }
  // Tables of the prose (a table inside an output is measured with the output): the box that would scroll is the
  // theme's .table-wrapper when there is one, else the table; a table wider than the article fails too.
  const tables = [];
  for (const table of article.querySelectorAll("table")) {
    if (table.closest(".output, .highlight, pre")) { continue; }
    const box = table.closest(".table-wrapper") || table;
    const width = Math.ceil(table.getBoundingClientRect().width);
    if (box.clientWidth > 0 && (box.scrollWidth > box.clientWidth || width > article.clientWidth)) {
      const cell = table.closest(".cell");
      tables.push({cell: cell ? cells.indexOf(cell) : -1, scroll: Math.max(box.scrollWidth, width),
                   client: Math.min(box.clientWidth, article.clientWidth),
                   text: table.textContent.trim().replace(/\s+/g, " ").slice(0, 70)});
    }
  }
  // Wide displayed formulas are notes: MathJax lets a reader scroll one, and their source is prose.
  const notes = [];
  for (const el of article.querySelectorAll('mjx-container[display="true"]')) {
    if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth) {
      notes.push({tag: el.tagName.toLowerCase(), scroll: el.scrollWidth, client: el.clientWidth,
                  text: (el.getAttribute("aria-label") || el.textContent).trim().replace(/\s+/g, " ").slice(0, 70)});
    }
  }
  const images = Array.from(document.images).filter(i => i.getAttribute("src"));
  return {
    wide: wide,
    tables: tables,
    notes: notes,
    brokenImages: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute("src")),
    images: images.length,
    mathElements: document.querySelectorAll(".math").length,
    mjx: document.querySelectorAll("mjx-container").length,
    pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth,
  };
})()
"""


class Browser:
    """Headless Chromium and one tab, over the DevTools protocol on a pipe (fd 3: commands in, fd 4: out)."""

    def __init__(self, chromium: str, width: int, height: int):
        self.profile = tempfile.mkdtemp(prefix="btp-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def child_fds():
            # Move both ends out of the way first: one of them may already be fd 3 or 4.
            read_end, write_end = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_read, from_browser_write))
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        flags = ["--headless=new", "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "--no-first-run",
                 "--no-default-browser-check", "--disable-gpu", "--disable-extensions", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update",
                 f"--window-size={width},{height}"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox
        self.process = subprocess.Popen([chromium, *flags, "about:blank"], preexec_fn=child_fds,
                                        pass_fds=(3, 4),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.send(method, session=True)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = LOAD_TIMEOUT):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            if "method" in answer:
                self.events.append(answer)

    def wait_for(self, method: str, timeout: float = LOAD_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(event["method"] == method for event in self.events):
            self.events.append(self._read_message(deadline))

    def open(self, url: str) -> None:
        self.events = []
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("text", "exception"))
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b64decode(self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]))

    def console_errors(self) -> list[str]:
        """What Selenium's log calls SEVERE: console.error, uncaught exceptions, failed loads."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"]))
            elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
        return found

    def requests_elsewhere(self, base: str) -> list[str]:
        """URLs the page asked for that the local server does not serve (anything on the network)."""
        urls = [event["params"]["request"]["url"] for event in self.events
                if event["method"] == "Network.requestWillBeSent"]
        return [url for url in urls if not url.startswith((base, "data:", "blob:", "about:"))]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def parts(root: Path = ROOT) -> dict[str, list[str]]:
    """Caption of each "Part ..." section of _toc.yml -> its notebooks, in order."""
    found, caption = {}, None
    notebooks = set(toc_notebooks(root))
    for line in (root / "_toc.yml").read_text().splitlines():
        match = re.match(r"\s*-\s*caption:\s*\"?([^\"]+)\"?\s*$", line)
        if match:
            caption = match.group(1)
            continue
        match = re.match(r"\s*-?\s*file:\s*(\S+)", line)
        if match and caption and caption.startswith("Part") and match.group(1) in notebooks:
            found.setdefault(caption, []).append(match.group(1))
    return found


def showcase(site: Path, root: Path = ROOT) -> list[tuple[str, str]]:
    """(name, page) of the pages to photograph: the landing page and one chapter per part."""
    chosen = [("landing", "index.html")]
    for caption, docs in parts(root).items():
        docs = [doc for doc in docs if (site / f"{doc}.html").exists()]
        if not docs:
            continue

        def shows_figure_and_math(doc: str) -> bool:
            page = Page((site / f"{doc}.html").read_text(errors="replace"))
            has_figure = any(tag == "img" for tag, _ in page.elements)
            return has_figure and bool(page.with_class("math"))

        doc = next((d for d in docs if shows_figure_and_math(d)), docs[0])
        part = re.match(r"Part ([IVX]+)", caption)
        chosen.append((f"part{part.group(1) if part else caption}_{Path(doc).name}", f"{doc}.html"))
    return chosen


def findings(page: str, state: dict) -> tuple[list[str], list[str]]:
    """(problems, notes) of one page from what ``MEASURE`` returned: code, outputs and tables that scroll
    sideways, images not loaded and math MathJax did not render are problems; wide displayed formulas are notes."""
    problems = []
    for item in state["wide"]:
        where = f"cell {item['cell']}" if item["cell"] >= 0 else "outside a cell"
        problems.append(f"{page}: {where}: <{item['tag']} class={item['cls']!r}> scrolls sideways "
                        f"({item['scroll']} > {item['client']} px): {item['text']!r}")
    for item in state.get("tables", []):
        where = f"cell {item['cell']}" if item["cell"] >= 0 else "outside a cell"
        problems.append(f"{page}: {where}: <table> scrolls sideways ({item['scroll']} > {item['client']} px): "
                        f"{item['text']!r}")
    problems += [f"{page}: image not loaded: {src}" for src in state["brokenImages"]]
    if state["mathElements"] and not state["mjx"]:
        problems.append(f"{page}: {state['mathElements']} math elements, but MathJax rendered none")
    notes = [f"{page}: note: <{item['tag']}> wider than the article, scrolls ({item['scroll']} > "
             f"{item['client']} px): {item['text']!r}" for item in state["notes"]]
    return problems, notes


SCROLL_TO = """(() => {{ const el = document.querySelector({selector!r}); if (!el) return false;
  el.scrollIntoView({{block: "center"}}); return true; }})()"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, nargs="?", default=ROOT / "_build" / "html")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--screenshots", type=Path, default=SCREENSHOTS, help="folder, emptied first")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    if not pages(site):
        print(f"no pages in {site}: run `make book` first")
        return 1
    if not Path(args.chromium).exists():
        print(f"SKIPPED: no Chromium at {args.chromium}")
        return 0
    server, base = serve(site)
    browser = Browser(args.chromium, args.width, args.height)
    problems, notes, measured = [], [], 0
    try:
        shots = dict((page, name) for name, page in showcase(site))
        if args.screenshots.exists():
            shutil.rmtree(args.screenshots)
        for path in pages(site):
            page = path.relative_to(site).as_posix()
            try:
                browser.open(base + page)
                state = browser.evaluate(MEASURE)
            except (TimeoutError, RuntimeError) as error:
                problems.append(f"{page}: did not load ({error})")
                continue
            measured += 1
            found, noted = findings(page, state)
            problems += found
            notes += noted
            problems += [f"{page}: console error: {error}" for error in browser.console_errors()]
            problems += [f"{page}: requested from the network: {url}" for url in browser.requests_elsewhere(base)]
            if page in shots:
                name = shots[page]
                browser.evaluate("window.scrollTo(0, 0)")
                browser.screenshot(args.screenshots / f"{name}.png")
                for what, selector in (("figure", ".cell_output img"), ("math", "div.math mjx-container")):
                    if browser.evaluate(SCROLL_TO.format(selector=selector)):
                        time.sleep(0.2)
                        browser.screenshot(args.screenshots / f"{name}_{what}.png")
                print(f"{page}: {state['images']} images, {state['mjx']} formulas rendered, "
                      f"screenshots {name}*.png")
    finally:
        browser.close()
        server.shutdown()
    for line in notes + problems:
        print(line)
    print(f"{measured} pages measured at {args.width} px; screenshots in {args.screenshots}/; "
          f"{len(problems)} problems, {len(notes)} notes (displayed formulas that scroll: not failed)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
