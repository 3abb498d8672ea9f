"""tools/README.md indexes every script in tools/: a script added without a line there fails here."""

import re

from behind_pipeline.paths import PROJECT_ROOT


def test_every_tools_script_has_a_row_in_the_index():
    index = (PROJECT_ROOT / "tools" / "README.md").read_text()
    listed = set(re.findall(r"^\| [a-z]+ \| `([\w.]+\.py)` \|", index, flags=re.MULTILINE))
    scripts = {path.name for path in (PROJECT_ROOT / "tools").glob("*.py")}
    assert scripts - listed == set(), "scripts missing from tools/README.md"
    assert listed - scripts == set(), "tools/README.md lists scripts that do not exist"
