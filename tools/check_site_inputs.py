"""Refuse to build the site from notebooks that store an error outside a cell tagged ``raises-exception``."""

import sys

from notebook_files import notebooks, unexpected_errors

if __name__ == "__main__":
    errors = [error for path in notebooks() for error in unexpected_errors(path)]
    print("\n".join(errors) if errors else "no unexpected error outputs")
    sys.exit(1 if errors else 0)
