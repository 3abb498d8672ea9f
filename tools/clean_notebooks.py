"""Keep notebooks clean: whitelisted metadata, no widget state, numbered cells, and no machine-specific output.

    python tools/clean_notebooks.py            # clean every notebook in place
    python tools/clean_notebooks.py --check    # change nothing; exit 1 and say why if any notebook is unclean

Besides rewriting metadata, the check refuses stored outputs that would differ on another machine or that a
reader should never see: memory addresses, folders of this machine, stderr noise (warnings, progress bars),
and tags that switch nbval off, or compare a cell only on the kind of CPU that stored it, without a comment saying
why.
"""

import argparse
import json
import re
import sys

import nbformat

from notebook_files import ROOT, notebooks

# behind_pipeline: the kind of CPU the outputs were made on (behind_pipeline/nbval_cpu.py)
NOTEBOOK_METADATA = {"kernelspec", "language_info", "behind_pipeline"}
CELL_METADATA = {"tags", "mystnb"}  # tags drive nbval/papermill/myst; mystnb holds figure alt text
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
UNCOMPARED_TAGS = {"nbval-ignore-output", "nbval-skip"}
# A cell whose output is not compared must say why in a comment the reader sees.
WHY_COMMENT = re.compile(r"^# (Output not compared|Not run) by the tests: \S.{8,}", re.MULTILINE)
CPU_TAG = "depends-on-cpu"  # compared only on the kind of CPU that stored the outputs
CPU_COMMENT = re.compile(r"^# Output compared only on the kind of CPU that stored it: \S.{8,}", re.MULTILINE)
FORBIDDEN_OUTPUT = {
    "a memory address": re.compile(r"\bat 0x[0-9a-fA-F]{6,}"),
    "a folder of this machine": re.compile("|".join(map(re.escape, {str(ROOT), "/root/", "/home/", "/tmp/"}))),
}


def merged_streams(outputs: list) -> list:
    """Join consecutive prints to the same stream: how a kernel chunks them depends on the machine's speed."""
    merged = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.output_type == "stream" and previous is not None and previous.output_type == "stream"
                and previous.name == output.name):
            previous.text += output.text
        else:
            merged.append(output)
    return merged


def clean(nb) -> None:
    nb.metadata = {key: value for key, value in nb.metadata.items() if key in NOTEBOOK_METADATA}
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    count = 0
    for cell in nb.cells:
        cell.metadata = {key: value for key, value in cell.metadata.items() if key in CELL_METADATA}
        cell.pop("attachments", None) if cell.cell_type != "markdown" else None
        if cell.cell_type != "code":
            continue
        count += 1
        cell.outputs = merged_streams(cell.outputs)
        cell.execution_count = count if cell.outputs else None
        for output in cell.outputs:
            output.pop("execution_count", None) if output.output_type != "execute_result" else None
            if output.output_type == "execute_result":
                output.execution_count = count
            if "metadata" in output:
                output.metadata = {}
            if "data" in output:
                output.data.pop("application/vnd.jupyter.widget-view+json", None)


def problems(nb) -> list[str]:
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"cell {index}"
        tags = set(cell.metadata.get("tags", []))
        if tags & UNCOMPARED_TAGS and not WHY_COMMENT.search(cell.source):
            found.append(f"{where}: tagged {sorted(tags & UNCOMPARED_TAGS)} without a '# Output not compared by the "
                         "tests: <why>' (or '# Not run by the tests: <why>') comment")
        if CPU_TAG in tags and not CPU_COMMENT.match(cell.source):  # the first line, where make_exercises looks
            found.append(f"{where}: tagged {CPU_TAG!r} without a first line '# Output compared only on the kind of "
                         "CPU that stored it: <why>'")
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                found.append(f"{where}: stderr output (a warning or progress bar): fix its cause")
            text = json.dumps(output.get("data", {}).get("text/plain", "")) + output.get("text", "")
            text += "".join(output.get("traceback", []))
            for what, pattern in FORBIDDEN_OUTPUT.items():
                if pattern.search(text):
                    found.append(f"{where}: output shows {what}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report instead of rewriting")
    parser.add_argument("paths", nargs="*", help="notebooks (default: all of the book's)")
    args = parser.parse_args()
    targets = [ROOT / p for p in args.paths] if args.paths else notebooks()
    failures = []
    for path in targets:
        original = path.read_text()
        nb = nbformat.reads(original, as_version=4)
        clean(nb)
        cleaned = nbformat.writes(nb) + "\n"
        name = path.relative_to(ROOT)
        if cleaned != original:
            if args.check:
                failures.append(f"{name}: not clean (run `make clean-notebooks`)")
            else:
                path.write_text(cleaned)
        failures += [f"{name}: {problem}" for problem in problems(nb)]
    print("\n".join(failures) if failures else f"{len(targets)} notebooks clean")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
