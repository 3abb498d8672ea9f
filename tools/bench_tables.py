"""Render the benchmark (``results/bench.json``, from ``make bench``) into the book's benchmark page and the README.

    python tools/bench_tables.py           # rewrite book/benchmark.md and README.md's bench block, and the plot
    python tools/bench_tables.py --check   # exit 1 if either text is out of date with results/bench.json

Every number comes from the results file: the section ``models`` (``python -m behind_pipeline.bench``) and, when
present, the section ``service`` (``python -m behind_pipeline.service.bench``, chapter 18). Nothing here is typed.
The plot goes to ``book/_static/benchmark.png``; the page shows it with its alt text. The block is written by
``blocks.update``, the renderer of every generated block: a file that lost its markers fails in both modes.
Each table keeps to a few columns, so none is wider than the site's article at 1280 px (``make browser`` fails
on a table that scrolls sideways).
"""

import argparse
import json
import sys

from behind_pipeline.paths import BENCH_FILE
from behind_pipeline.service.bench import markdown_table as table

from blocks import exit_status, update
from notebook_files import ROOT

PAGE = ROOT / "book" / "benchmark.md"
README = ROOT / "README.md"
PLOT = ROOT / "book" / "_static" / "benchmark.png"
BLOCK = "bench-tables"
PLOT_ALT = ("Two panels. Left: median latency of one forward pass at batch sizes 1, 8 and 32 for each variant of "
            "the classifier, as grouped bars on a log scale. Right: size on disk against accuracy on the test "
            "split, one labelled point per variant.")


def ms(value: float) -> str:
    return f"{value:.1f}"


def measured_line(section: dict) -> str:
    machine = section["machine"]
    versions = ", ".join(f"{name} {value}" for name, value in section["versions"].items() if value)
    flags = "".join(f", {label} {'yes' if machine[key] else 'no'}" for key, label in
                    (("avx512_bf16", "AVX512-BF16"), ("amx", "AMX")) if key in machine)
    return (f"Measured on {machine['cpu']} ({machine['architecture']}, {machine['cores']} cores{flags}), "
            f"{section['threads']} threads for every engine, {section['measured_at']}; {versions}.")


def models_table(section: dict) -> list[str]:
    """What each variant gives: throughput first (the figure Part III is about), then the answers and the cost."""
    header = ["variant", "throughput (reviews/s)", "accuracy", "macro-F1", "size on disk (MiB)",
              "peak memory (MiB)"]
    return table(header, [[row["label"], f"{row['throughput_per_s']:.0f}", f"{row['accuracy']:.4f}",
                           f"{row['macro_f1']:.4f}", f"{row['size_mib']:.1f}", f"{row['peak_memory_mib']:.0f}"]
                          for row in section["variants"]])


def latency_table(section: dict) -> list[str]:
    """Median / p95 of one forward pass at each batch size, one column per size."""
    rows = section["variants"]
    sizes = list(rows[0]["latency"]) if rows else []
    header = ["variant"] + [f"batch {size}: median / p95 (ms)" for size in sizes]
    return table(header, [[row["label"]] + [f"{ms(row['latency'][s]['median_ms'])} / {ms(row['latency'][s]['p95_ms'])}"
                                            for s in sizes] for row in rows])


def ratios_tables(section: dict) -> list[str]:
    """Against fp32, in two tables: the speed-ups, then what changes in size and in the answers."""
    ratios, labels = section["vs_fp32"], {row["variant"]: row["label"] for row in section["variants"]}
    if not ratios:
        return []
    sizes = list(next(iter(ratios.values()))["speedup"])
    speed = table(["variant"] + [f"speed-up at batch {size}" for size in sizes],
                  [[labels[name]] + [f"{ratio['speedup'][s]:.2f}x" for s in sizes] for name, ratio in ratios.items()])
    answers = table(["variant", "size / fp32", "accuracy change (points)", "max logit diff", "labels changed"],
                    [[labels[name], f"{ratio['size_ratio']:.2f}", f"{ratio['accuracy_change_points']:+.2f}",
                      f"{ratio['max_abs_logit_diff']:.1e}", str(ratio["label_mismatches"])]
                     for name, ratio in ratios.items()])
    return [*speed, "", *answers]


def compile_lines(section: dict) -> list[str]:
    """``torch.compile``: what the first calls cost against the steady state the tables show (when measured)."""
    row = next((row for row in section["variants"] if "first_call_seconds" in row), None)
    if row is None:
        return []
    steady = row["latency"].get("1", {}).get("median_ms")
    fp32 = next((r for r in section["variants"] if r["variant"] == "fp32"), None)
    lines = ["### `torch.compile`: compile time against steady state", "",
             f"- first call on one review (it compiles): {row['first_call_seconds']:.1f} s; second call: "
             f"{1000 * row['second_call_seconds']:.1f} ms"
             + (f"; steady state at batch 1 (median): {steady:.1f} ms" if steady is not None else "") + ".",
             f"- first pass over the {row['texts']:,} test reviews (new batch shapes compile again): "
             f"{row['first_pass_seconds']:.1f} s; the measured pass after it: "
             f"{row['texts'] / row['throughput_per_s']:.1f} s"
             + (f" (fp32 without compiling: {fp32['texts'] / fp32['throughput_per_s']:.1f} s)" if fp32 else "")
             + "."]
    ratio = section["vs_fp32"].get(row["variant"])
    if ratio:
        lines.append("- steady-state speed-up against fp32: "
                     + ", ".join(f"batch {size} {value:.2f}x" for size, value in ratio["speedup"].items()) + ".")
    return [*lines, ""]


def failed_lines(section: dict) -> list[str]:
    """Variants that could not run in this run, with the last line of their error."""
    failed = section.get("failed", {})
    return [*(f"- **{VARIANTS_FAILED}** {name}: {message}" for name, message in failed.items()), ""] if failed else []


VARIANTS_FAILED = "not measured:"


def targets_lines(section: dict) -> list[str]:
    lines = []
    for target in section["targets"].values():
        figures = ", ".join(f"{key.replace('_', ' ')} {value:.3g}" for key, value in target.items()
                            if isinstance(value, float))
        lines.append(f"- {'met' if target['met'] else '**not met**'}: {target['goal']} ({figures})")
    return lines


def service_lines(service: dict) -> list[str]:
    """The service's figures (chapter 18), with their heading; chapter 18 renders the same table with the same
    function (``behind_pipeline.service.bench.table_lines``)."""
    from behind_pipeline.service.bench import table_lines

    return ["### The service (chapter 18), `make bench-service`", "", *table_lines(service)] if service.get(
        "models") else []


def ray_lines(section: dict) -> list[str]:
    """Chapter 20's comparison (``make bench-ray``): chapter 18's service against Ray Serve; the chapter renders
    the same table with the same function (``behind_pipeline.service.ray_bench.table_lines``)."""
    from behind_pipeline.service.ray_bench import table_lines

    return ["### Chapter 18's service against Ray Serve (chapter 20), `make bench-ray`", "", *table_lines(section),
            ""]


def body(results: dict, image: str) -> list[str]:
    """The lines of the block, between its markers."""
    section = results.get("models")
    if not section:
        lines = ["Not measured yet: run `make bench`.", ""]
    else:
        lines = [measured_line(section), "", "### Every variant of the course classifier", "",
                 *models_table(section), "", "### Latency of one forward pass", "", *latency_table(section), "",
                 "### Against fp32, in the same run", "", *ratios_tables(section), "",
                 *compile_lines(section), *failed_lines(section), "### The issue's targets",
                 "", *targets_lines(section), "", f"![{PLOT_ALT}]({image})", ""]
        if section.get("setting") != "full":
            lines.insert(0, f"(A `{section.get('setting')}` run: a few texts and repeats, not a measurement.)\n")
    if results.get("service"):
        lines += service_lines(results["service"])
    if results.get("ray"):
        lines += ray_lines(results["ray"])
    return ["", *lines]


def block(results: dict, image: str) -> str:
    """The block as text, its markers included (what the page and the README hold)."""
    return "\n".join(["<!-- bench-tables:start -->", *body(results, image), "<!-- bench-tables:end -->"])


def plot(section: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = section["variants"]
    sizes = list(rows[0]["latency"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        positions = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(sizes))]
        left.bar(positions, [row["latency"][s]["median_ms"] for s in sizes], width, label=row["label"],
                 color=f"C{i}")
    left.set_xticks(range(len(sizes)), [f"batch {s}" for s in sizes])
    left.set_yscale("log")
    slowest = max(row["latency"][s]["median_ms"] for row in rows for s in sizes)
    left.set_ylim(top=slowest * 8)  # room for the legend above the bars
    left.set_ylabel("median latency (ms, log scale)")
    left.set_title(f"One forward pass, {section['threads']} threads")
    left.legend(fontsize=8)
    placed = []
    for i, row in enumerate(rows):
        right.scatter(row["size_mib"], row["accuracy"], color=f"C{i}")
        # Variants at (almost) the same point get their labels stacked, not printed over each other.
        near = sum(abs(row["size_mib"] - size) < 5 and abs(row["accuracy"] - accuracy) < 0.001
                   for size, accuracy in placed)
        placed.append((row["size_mib"], row["accuracy"]))
        right.annotate(row["label"], (row["size_mib"], row["accuracy"]), textcoords="offset points",
                       xytext=(5, 4 - 11 * near), fontsize=8)
    right.set_xlim(0, max(size for size, _ in placed) * 1.6)  # room for the labels on the right
    right.set_xlabel("size on disk (MiB)")
    right.set_ylabel("accuracy on the test split")
    right.set_title("Size against accuracy")
    fig.suptitle(f"Benchmark, {section['measured_at']}")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    results = json.loads(BENCH_FILE.read_text()) if BENCH_FILE.exists() else {}
    stale = []
    for path, image in ((PAGE, "_static/benchmark.png"), (README, "book/_static/benchmark.png")):
        stale += update(path, {BLOCK: body(results, image)}, args.check)
    if results.get("models") and not args.check:
        plot(results["models"])
    elif results.get("models") and not PLOT.exists():
        stale.append(f"{PLOT.relative_to(ROOT)} is missing")
    print("\n".join(f"out of date: {s}" for s in stale) if stale else "benchmark tables current")
    return exit_status(stale, args.check)


if __name__ == "__main__":
    sys.exit(main())
