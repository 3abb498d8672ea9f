"""A pytest plugin for nbval: outputs that depend on the kind of CPU are compared on that kind only.

Most stored outputs repeated on both kinds of x86 machine the book was run on. A few did not: int8 kernels take
other paths with and without VNNI (chapters 15-18), and a model trained here (the router of chapter 19) or a
scikit-learn score can move in the last printed digit with the order in which vector kernels add
(``book/troubleshooting.md``, "another kind of CPU"). Such a cell carries the tag ``depends-on-cpu`` and a first
comment that says why; the notebook's metadata records the kind of CPU its outputs were made on
(``behind_pipeline.outputs_made_on``, written by ``tools/execute_notebooks.py``, from
:func:`behind_pipeline.runtime.cpu_kind`).

On that kind, a tagged cell is compared like any other. On another kind it still runs (an error or a failing
``assert`` in it still fails), but its output is not compared, and the run's summary says how many cells that was.

``conftest.py`` loads it for every pytest run in the project; ``pytest -p behind_pipeline.nbval_cpu`` elsewhere.
"""

import pytest

TAG = "depends-on-cpu"
METADATA_KEY = "behind_pipeline"
MADE_ON = "outputs_made_on"
UNRECORDED = "an unrecorded CPU"

_switched_off: dict[str, str] = {}  # nodeid -> the kind its outputs were made on, for the cells this run skips
_uncompared: list[str] = []  # those of them that ran
_kinds: set[str] = set()  # the kinds those were stored on
_here: list[str] = []  # this machine's kind, once a tagged cell asked for it


def outputs_made_on(nb) -> str | None:
    """The kind of CPU a notebook's stored outputs were made on, or None when it is not recorded."""
    return nb.metadata.get(METADATA_KEY, {}).get(MADE_ON)


def pytest_collection_modifyitems(config, items):
    for item in items:
        cell = getattr(item, "cell", None)
        options = getattr(item, "options", None)
        if cell is None or options is None or TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        if not options["check"] or options["skip"]:
            continue  # not compared anyway (--nbval-lax, nbval-ignore-output) or not run (nbval-skip)
        if not _here:
            from behind_pipeline.runtime import cpu_kind

            _here.append(cpu_kind())
        made_on = outputs_made_on(item.parent.nb)
        if made_on != _here[0]:
            options["check"] = False
            _switched_off[item.nodeid] = made_on or UNRECORDED


def pytest_runtest_logreport(report):
    if report.when == "call" and report.nodeid in _switched_off:
        _uncompared.append(report.nodeid)
        _kinds.add(_switched_off[report.nodeid])


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    if _uncompared:
        terminalreporter.write_line(
            f"{len(_uncompared)} cells tagged {TAG} ran without comparing their outputs: stored on "
            f"{', '.join(sorted(_kinds))}, this CPU is {_here[0]} (behind_pipeline/nbval_cpu.py)")
