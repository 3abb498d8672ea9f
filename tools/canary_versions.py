"""The drift canary's requirements and versions (tools/canary.py): the pins, the newest releases, pip's conflicts,
and what differs between the pinned environment and the canary's."""

import re

# The libraries whose drift the canary watches: everything the book teaches through, and the notebook tester.
CANARY_PACKAGES = ("transformers", "tokenizers", "datasets", "peft", "accelerate", "huggingface_hub", "nbval")
# Colour codes in pip's and nbval's messages; pytest writes the escape character into junit XML as the text "#x1B".
ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*m")


def normalize(name: str) -> str:
    """PEP 503 name: ``huggingface_hub`` and ``Huggingface-Hub`` are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------------- requirements


def requirement_name(line: str) -> str | None:
    """The package a requirements line asks for (``None`` for comments, blank lines and pip options)."""
    text = line.split("#", 1)[0].strip()
    if not text or text.startswith("-"):
        return None
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
    return normalize(match.group(0)) if match else None


def pinned_versions(requirements: str) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` line."""
    pins = {}
    for line in requirements.splitlines():
        name = requirement_name(line)
        match = re.search(r"==\s*([^\s;#]+)", line.split("#", 1)[0])
        if name and match:
            pins[name] = match.group(1)
    return pins


def rewrite_requirements(requirements: str, versions: dict[str, str | None]) -> str:
    """Requirements with the pin of each package in ``versions`` replaced, every other line kept as it is.

    ``versions`` maps a package name to the version to pin (``"5.24.0"`` -> ``name==5.24.0``) or to ``None``
    (``name`` alone: pip picks the newest release that fits the other pins). Names are compared normalized.
    """
    wanted = {normalize(name): version for name, version in versions.items()}
    lines = []
    for line in requirements.splitlines():
        name = requirement_name(line)
        if name in wanted:
            version = wanted[name]
            line = name if version is None else f"{name}=={version}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def newest_from_report(report: dict) -> dict[str, str]:
    """``{normalized name: version}`` from the JSON of ``pip install --dry-run --report``."""
    return {normalize(item["metadata"]["name"]): item["metadata"]["version"] for item in report.get("install", [])}


def pip_conflict(output: str) -> list[str]:
    """The lines in which pip explains why requirements cannot be installed together (empty when it says none)."""
    text = ANSI.sub("", output)
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.strip() == "The conflict is caused by:":
            for following in lines[index + 1 :]:
                if not following.strip():
                    break
                found.append(following.strip())
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("ERROR:") and (
            "conflicting dependencies" in stripped
            or "Could not find a version" in stripped
            or "No matching distribution" in stripped
            or "ResolutionImpossible" in stripped
        ):
            found.append(stripped)
    return list(dict.fromkeys(found))


def conflicting_packages(conflict: list[str], candidates) -> list[str]:
    """Which of ``candidates`` pip's conflict lines name (``transformers 5.24.0 depends on ...``)."""
    named = set()
    for line in conflict:
        for word in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", line):
            named.add(normalize(word))
    return [name for name in candidates if normalize(name) in named]


# ---------------------------------------------------------------------------------------------------- versions


def public_version(version: str | None) -> str | None:
    """``2.13.0+cpu`` -> ``2.13.0``: a local label (the CPU build of torch) still satisfies ``==2.13.0``."""
    return version.split("+", 1)[0] if version else version


def version_changes(pins: dict[str, str], installed: dict[str, str]) -> list[dict]:
    """Every pinned package whose installed version differs from its pin (or that is missing)."""
    changes = []
    for name, pinned in pins.items():
        got = installed.get(name)
        if public_version(got) != public_version(pinned):
            changes.append({"package": name, "pinned": pinned, "canary": got})
    return changes


def other_changes(pins: dict[str, str], pinned_env: dict[str, str], canary_env: dict[str, str]) -> list[dict]:
    """Packages not pinned in requirements.txt (dependencies of dependencies) whose version differs from .venv."""
    changes = []
    for name in sorted(set(pinned_env) | set(canary_env)):
        if name in pins or name in {"behind-pipeline", "pip", "setuptools", "wheel"}:
            continue
        if pinned_env.get(name) != canary_env.get(name):
            changes.append({"package": name, "pinned_env": pinned_env.get(name), "canary": canary_env.get(name)})
    return changes
