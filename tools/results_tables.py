"""Render the experiment results (``results/small``, ``results/full``) into the book's results page and the README.

    python tools/results_tables.py           # rewrite book/results.md and README.md's results block
    python tools/results_tables.py --check   # exit 1 if either is out of date with results/

Every number comes from a results file written by a notebook's ``record(...)`` call (``make small``,
``make full``); nothing here is typed.
"""

import argparse
import json
import sys

from behind_pipeline.results import load_rows

from blocks import exit_status, update
from notebook_files import ROOT

PAGE = ROOT / "book" / "results.md"
README = ROOT / "README.md"
RUN_TITLES = {
    "small": "Small run: the settings of the stored notebooks (what the tests execute), `make small`",
    "full": "Full run: all training data and epochs, `make full`",
}
# Column order; a column appears only when some row has it. Values are printed as recorded.
# Two tables per run, what each model scores and what it costs, each with the model's name first: one table of ten
# columns is wider than the page at 1280 px (`make browser` fails on a table that scrolls sideways).
# A row over several seeds (chapter 12) records each score's standard deviation (`accuracy_sd`, `macro_f1_sd`) and
# the number of seeds: its score cells read "mean ± sd", in the same columns, and a line under the table says over
# how many seeds (a wider cell would make the table scroll sideways at 1280 px).
GROUPS = (("model", "accuracy", "macro_f1", "train_examples", "epochs", "source"),
          ("model", "train_seconds", "trainable_parameters", "trainable_share", "size_mib"))
COLUMNS = {
    "model": "model", "accuracy": "accuracy", "macro_f1": "macro-F1", "train_examples": "train examples",
    "epochs": "epochs", "train_seconds": "train time (s)", "trainable_parameters": "trainable parameters",
    "trainable_share": "trainable share", "size_mib": "size on disk (MiB)", "source": "notebook",
}


# How each column prints; any other value prints as recorded (ints with thousands separators).
FORMATS = {
    "accuracy": "{:.4f}", "macro_f1": "{:.4f}", "epochs": "{:g}", "train_seconds": "{:,.1f}",
    "trainable_share": "{:.2%}", "size_mib": "{:.2f}",
}


def cell(key: str, value) -> str:
    if value == "" or value is None:
        return ""
    if key == "trainable_share" and 0 < value < 1e-4:
        return f"{value:.4%}"  # a probe's few hundred coefficients: 0.00% would read as nothing
    if key in FORMATS:
        return FORMATS[key].format(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def score_cell(key: str, row: dict) -> str:
    """A score, with its spread over seeds when the row recorded one: "0.7012 ± 0.0123"."""
    text = cell(key, row.get(key, ""))
    if row.get(f"{key}_sd") is None or not text:
        return text
    return f"{text} ± {cell(key, row[f'{key}_sd'])}"


def spread_note(rows: list[dict]) -> list[str]:
    """The line under a table whose rows include scores over seeds: what the ± means, over how many seeds, and on how
    many test reviews when a row scored fewer than the whole split."""
    seeded = {row["source"]: (row["seeds"], row.get("test_reviews")) for row in rows if row.get("seeds")}
    if not seeded:
        return []
    which = "; ".join(f"{source}: {seeds} seeds" + (f", {reviews:,} test reviews" if reviews else "")
                      for source, (seeds, reviews) in seeded.items())
    return ["", f"± : the mean and standard deviation over seeds ({which})."]


def table(run: str) -> list[str]:
    rows = load_rows(ROOT / "results" / run)
    lines = [f"### {RUN_TITLES[run]}", ""]
    if not rows:
        return lines + [f"Not measured yet: run `make {run}`.", ""]
    for group in GROUPS:
        columns = [key for key in group if any(key in row for row in rows)]
        lines += ["| " + " | ".join(COLUMNS[key] for key in columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(score_cell(key, row) for key in columns) + " |")
        if "accuracy" in group:
            lines += spread_note(rows)
        lines.append("")
    lines.pop()
    machines = sorted({json.loads(path.read_text())["machine"] for path in (ROOT / "results" / run).glob("*.json")})
    dates = sorted({json.loads(path.read_text())["measured_on"] for path in (ROOT / "results" / run).glob("*.json")})
    lines += ["", f"Measured on {', '.join(machines)}; {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}.", ""]
    return lines


def blocks() -> dict[str, list[str]]:
    return {"results-tables": ["", *table("small"), *table("full")]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = [line for path in (PAGE, README) for line in update(path, blocks(), args.check)]
    print("\n".join(f"out of date: {s}" for s in stale) if stale else "results tables current")
    return exit_status(stale, args.check)


if __name__ == "__main__":
    sys.exit(main())
