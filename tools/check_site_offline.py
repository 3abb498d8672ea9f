"""Check that the built site loads nothing from the network: no external script, stylesheet, font or image.

    python tools/check_site_offline.py _build/html
"""

import re
import sys
from pathlib import Path

# Resources a browser fetches by itself; plain <a href="https://..."> links are fine.
EXTERNAL_RESOURCE = re.compile(
    r"<(script|link|img|iframe|source)\b[^>]*\b(src|href)=[\"'](https?:)?//[^\"']+[\"']", re.IGNORECASE
)
EXTERNAL_CSS = re.compile(r"(@import|url\()\s*[\"']?(https?:)?//", re.IGNORECASE)


def external_resources(site: Path) -> list[str]:
    found = []
    for page in sorted(site.rglob("*")):
        if page.suffix not in {".html", ".css", ".js"}:
            continue
        text = page.read_text(errors="replace")
        pattern = EXTERNAL_RESOURCE if page.suffix == ".html" else EXTERNAL_CSS
        found += [f"{page.relative_to(site)}: {m.group(0)[:120]}" for m in pattern.finditer(text)]
    return found


if __name__ == "__main__":
    site = Path(sys.argv[1])
    pages = list(site.rglob("*.html"))
    if not pages:
        sys.exit(f"no pages in {site}")
    found = external_resources(site)
    print("\n".join(found) if found else f"{len(pages)} pages, no external resources")
    sys.exit(1 if found else 0)
