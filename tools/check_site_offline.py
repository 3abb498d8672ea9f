"""Check that the built site loads nothing from the network: no external script, stylesheet, font or image.

    python tools/check_site_offline.py _build/html

The last step of ``make book``; the check itself is ``check_site.external_resources``, one of the site tests that
``make test-site`` runs (tools/check_site.py).
"""

import sys
from pathlib import Path

from check_site import external_resources, pages

if __name__ == "__main__":
    site = Path(sys.argv[1])
    if not pages(site):
        sys.exit(f"no pages in {site}")
    found = external_resources(site)
    print("\n".join(found) if found else f"{len(pages(site))} pages, no external resources")
    sys.exit(1 if found else 0)
