"""The chapter map, one source of truth: for each chapter its notebook, exercises, solutions, checker, tests and
the package modules it teaches, rendered into CONTRIBUTING.md.

    python tools/chapter_map.py           # render the map into CONTRIBUTING.md
    python tools/chapter_map.py --check   # exit 1 when the rendered map is stale or a listed file is missing

A chapter's files follow from its stem (``NN_topic``); only the modules it teaches are listed by hand here.
``tests/test_chapter_map.py`` fails when a listed file is missing or a package module belongs to no chapter.
"""

import argparse
import sys

from blocks import ROOT, exit_status, update

# stem -> the package modules the chapter builds and explains (paths relative to behind_pipeline/).
TEACHES = {
    "00_start_here": [],
    "01_tokenizer": ["wordpiece.py"],
    "02_model": ["bert_by_hand.py"],
    "03_head": ["head.py"],
    "04_softmax": ["softmax.py", "calibration.py"],
    "05_pipeline_by_hand": ["pipeline_by_hand.py", "predict.py"],
    "06_batching": ["batching.py"],
    "07_other_heads": ["pooling.py"],
    "08_text_generation": ["generation.py", "tiny_gpt.py"],
    "09_datasets": ["data.py", "splits.py"],
    "10_baselines": ["baselines.py", "metrics.py", "results.py"],
    "11_trainer": ["trainer_setup.py"],
    "12_training_loop": ["training.py", "distributed.py"],
    "13_error_analysis": ["error_analysis.py"],
    "14_lora": ["lora.py"],
    "15_quantization": ["quantize.py", "measure.py", "bench.py"],
    "16_bitsandbytes": ["bnb.py"],
    "17_onnx": ["onnx_export.py"],
    "18_serving": ["service/"],
    "19_capstone": ["capstone/"],
    "20_scaling_out": ["service/ray_app.py", "service/ray_bench.py", "scale_out.py"],
}
# Modules no single chapter teaches: the foundation every chapter stands on, and the checkers' shared core.
FOUNDATION = ["__init__.py", "assets.py", "models.py", "paths.py", "runtime.py", "prepare.py", "trained_once.py",
              "guides.py", "nbval_cpu.py", "checks/_core.py", "checks/__init__.py"]


def files(stem: str) -> dict[str, str]:
    """The chapter's files by kind, as paths relative to the project root (chapter 0 has only its notebook)."""
    number, topic = stem.split("_", 1)
    found = {"notebook": f"notebooks/{stem}.ipynb"}
    if number != "00":
        found |= {"exercises": f"exercises/{stem}_exercises.ipynb",
                  "solutions": f"solutions/{stem}_solutions.ipynb",
                  "checker": f"behind_pipeline/checks/ch{number}_{topic}.py",
                  "tests": f"tests/test_ch{number}_{topic}.py"}
    found["modules"] = ", ".join(f"behind_pipeline/{module}" for module in TEACHES[stem])
    return found


def listed_paths() -> list[str]:
    """Every file and folder the map names."""
    paths = []
    for stem in TEACHES:
        entry = files(stem)
        paths += [value for key, value in entry.items() if key != "modules"]
        paths += [f"behind_pipeline/{module}" for module in TEACHES[stem]]
    return paths + [f"behind_pipeline/{module}" for module in FOUNDATION]


def table() -> list[str]:
    def code(path: str) -> str:
        return f"`{path}`" if path else "-"

    lines = ["| chapter | notebook | solutions | checker | tests | teaches (package) |", "|---|---|---|---|---|---|"]
    for stem in TEACHES:
        entry = files(stem)
        modules = ", ".join(code(m) for m in TEACHES[stem]) or "-"
        lines.append(f"| {int(stem[:2])} | {code(entry['notebook'])} | {code(entry.get('solutions', ''))} | "
                     f"{code(entry.get('checker', '').removeprefix('behind_pipeline/'))} | "
                     f"{code(entry.get('tests', ''))} | {modules} |")
    lines += ["", "Each chapter's blank exercises are `exercises/NN_topic_exercises.ipynb` (generated from its "
              "solutions). Modules of `behind_pipeline/` in the table are named without that prefix; the "
              "foundation under every chapter: " + ", ".join(code(m) for m in FOUNDATION) + "."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = [f"missing: {path}" for path in listed_paths() if not (ROOT / path).exists()]
    stale += update(ROOT / "CONTRIBUTING.md", {"chapter-map": table()}, args.check)
    print("\n".join(stale) if stale else "chapter map current")
    return 1 if any(line.startswith("missing") for line in stale) else exit_status(stale, args.check)


if __name__ == "__main__":
    sys.exit(main())
