"""Generate ``exercises/`` from ``solutions/`` with nbgrader's own preprocessors.

    python tools/make_exercises.py           # write exercises/NN_topic_exercises.ipynb
    python tools/make_exercises.py --check   # exit 1 if any exercise notebook is missing or out of date

Each solution notebook marks its answers with ``### BEGIN SOLUTION`` / ``### END SOLUTION`` (replaced by ``...``)
and optional ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` (removed); outputs are cleared. Because these
are nbgrader's markers and preprocessors, an instructor can drop ``solutions/`` into an nbgrader course unchanged.
"""

import argparse
import sys

import nbformat
from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions

from clean_notebooks import CPU_COMMENT, CPU_TAG, clean
from notebook_files import ROOT, notebooks

SOLUTION_SUFFIX = "_solutions.ipynb"
EXERCISE_SUFFIX = "_exercises.ipynb"
# "# 1. Tokenizer: exercises with solutions" becomes "# 1. Tokenizer: exercises" in the learner's copy.
SOLUTION_TITLE_SUFFIX = " with solutions"


def without_cpu_comment(source: str) -> str:
    """The cell without its first comment, '# Output compared only on the kind of CPU that stored it: <why>', which
    may go on over more comment lines until one ends with a full stop; the cell's own comments stay."""
    lines = source.split("\n")
    if not CPU_COMMENT.match(source):
        return source
    ended = False
    while lines and lines[0].startswith("#") and not ended:
        ended = lines.pop(0).rstrip().endswith(".")
    return "\n".join(lines)


def exercise_for(solution_nb):
    nb = nbformat.from_dict(solution_nb)
    resources = {}
    for preprocessor in (
        ClearSolutions(code_stub={"python": "..."}, text_stub="YOUR ANSWER HERE", enforce_metadata=False),
        ClearHiddenTests(enforce_metadata=False),
        ClearOutput(),
    ):
        nb, resources = preprocessor.preprocess(nb, resources)
    nb.metadata.pop("behind_pipeline", None)  # which CPU made the outputs: the exercise has none
    for cell in nb.cells:  # nor a comparison that depends on it: drop the tag and its comment
        tags = cell.metadata.get("tags", [])
        if CPU_TAG in tags:
            cell.metadata["tags"] = [tag for tag in tags if tag != CPU_TAG]
            cell.source = without_cpu_comment(cell.source)
            if not cell.metadata["tags"]:
                del cell.metadata["tags"]
    title, _, rest = nb.cells[0].source.partition("\n")
    nb.cells[0].source = title.removesuffix(SOLUTION_TITLE_SUFFIX) + _ + rest
    clean(nb)
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    expected = set()
    for solution_path in notebooks(("solutions",)):
        target = ROOT / "exercises" / solution_path.name.replace(SOLUTION_SUFFIX, EXERCISE_SUFFIX)
        expected.add(target)
        text = nbformat.writes(exercise_for(nbformat.read(solution_path, as_version=4))) + "\n"
        if target.exists() and target.read_text() == text:
            continue
        if args.check:
            stale.append(f"{target.relative_to(ROOT)} is out of date with {solution_path.relative_to(ROOT)}")
        else:
            target.parent.mkdir(exist_ok=True)
            target.write_text(text)
    stale += [f"{p.relative_to(ROOT)} has no solution notebook" for p in set(notebooks(("exercises",))) - expected]
    print("\n".join(stale) if stale else f"{len(expected)} exercise notebooks in sync with solutions/")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
