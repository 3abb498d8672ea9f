"""The blank exercise notebooks run to the end, as a learner first opens them: no cell raises (except a pitfall
tagged ``raises-exception``), and every check cell says what is still missing.

``make test-exercises`` runs this file (pytest collects it by name only; ``make test-unit`` does not). One
kernel runs every notebook in turn, its namespace reset between them: starting a kernel and importing torch,
transformers and datasets once per notebook cost more than the blank notebooks themselves. Outputs are not
compared (a blank answer's message is the checker's, tested in ``tests/test_chNN_*.py``).
"""

import os
import re

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel

from behind_pipeline.paths import configure_environment

from notebook_files import ROOT, notebooks

CELL_TIMEOUT = 600  # seconds; a blank exercise notebook takes seconds, a hang fails here instead of blocking CI
EXERCISES = ROOT / "exercises"
# Between notebooks: a fresh namespace, the notebook's own folder, no figure left open.
RESET = "%reset -f\nimport os as _os\n_os.chdir({folder!r})\nimport matplotlib.pyplot as _plt\n_plt.close('all')"


@pytest.fixture(scope="module")
def kernel():
    configure_environment()  # the kernel inherits the project's cache folders, as under nbval
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(EXERCISES), env=dict(os.environ))
    yield client
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def run(client, source: str) -> tuple[dict, list[str]]:
    """Execute ``source`` in the kernel: its reply's content and the text it showed."""
    shown = []

    def keep(message):
        content = message["content"]
        if message["msg_type"] == "stream":
            shown.append(content["text"])
        elif message["msg_type"] in ("execute_result", "display_data"):
            shown.append(content["data"].get("text/plain", ""))

    reply = client.execute_interactive(source, timeout=CELL_TIMEOUT, output_hook=keep, store_history=False)
    return reply["content"], shown


@pytest.mark.parametrize("path", notebooks(("exercises",)), ids=lambda p: p.name)
def test_blank_exercises_run_to_the_end(kernel, path):
    reply, _ = run(kernel, RESET.format(folder=str(path.parent)))
    assert reply["status"] == "ok", reply
    checks_shown = 0
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or not cell.source.strip() or "nbval-skip" in tags:
            continue
        reply, shown = run(kernel, cell.source)
        if "raises-exception" in tags:
            continue  # a pitfall shown on purpose
        assert reply["status"] == "ok", (f"{path.name}, cell {index} raised {reply.get('ename')}: "
                                         f"{reply.get('evalue')}\n{cell.source[:300]}")
        if re.search(r"^check_\w+\(", cell.source, re.MULTILINE):
            assert "".join(shown).strip(), f"{path.name}, cell {index}: the check said nothing to the learner"
            checks_shown += 1
    assert checks_shown >= 3, f"{path.name}: {checks_shown} check cells ran"
