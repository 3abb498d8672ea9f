"""Drift canary: the book's tests against the newest releases of the libraries it teaches.

    python tools/canary.py                      # install, test, recheck what broke, report (what `make canary` does)
    python tools/canary.py install              # only build .cache/canary-venv and record its versions
    python tools/canary.py test --only unit     # run part of the tests in that environment, then update the report
    python tools/canary.py test --only notebooks/05_pipeline_by_hand.ipynb solutions/05_pipeline_by_hand_solutions.ipynb
    python tools/canary.py recheck              # run what broke again in the pinned .venv: drift or not?
    python tools/canary.py report               # rebuild the report from the results already there

``install`` builds a separate environment, ``.cache/canary-venv``, from ``requirements.txt`` with the pins of
:data:`CANARY_PACKAGES` replaced by the newest release the package index serves (asked of pip itself, so the
same index configuration applies), and every other pin kept: torch stays the pinned CPU build. When a newest
release will not install beside the pins, pip's conflict is recorded as a finding and the install is tried again
with those packages left for pip to choose. The pinned environment, ``.venv``, is only read (its versions, for
the comparison); CI keeps using it.

``test`` runs what ``make test-unit`` and ``make test-notebooks`` run, with the same flags (a test compares them
with the Makefile), in the canary environment's own ``pytest``, with the Makefile's environment variables: models,
caches, pip's downloads and Jupyter's files stay in the project's ``.cache`` (pytest's own ``tmp_path`` folders go
where ``make test`` puts them, and pytest removes them). Results are read from pytest's ``--junitxml`` files,
one per run, so the tests can be run in several parts (``--only``): the report merges every result file of the
current canary environment.

``recheck`` runs the broken unit tests and the notebooks with broken cells again with the pinned ``.venv`` (its
``pytest``, nothing installed): a break that happens with the pins too comes from the working tree or the
machine, not from the new releases, and the report says so for each one.

The report lists the versions that differ from the pins, install conflicts, and which unit tests, notebooks
and cells broke, with the failing cell's message and diff; it is printed in short and written in full to
``.cache/canary/report.md`` and ``.cache/canary/report.json``. The exit status is 0 when everything installed
and passed (or every break also happens with the pins), 1 when the canary found something, 2 when it could not
run.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

# The orchestrator needs only the standard library and behind_pipeline.paths, importable from the checkout even
# by an interpreter that has not installed the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from canary_report import build_report, has_findings, mark_expected  # noqa: E402
from canary_results import (  # noqa: E402
    NOTEBOOK_TARGETS,
    Case,
    load_results,
    with_pinned_outcomes,
)
from canary_versions import (  # noqa: E402
    CANARY_PACKAGES,
    conflicting_packages,
    newest_from_report,
    normalize,
    other_changes,
    pinned_versions,
    pip_conflict,
    rewrite_requirements,
    version_changes,
)

from behind_pipeline.paths import _CACHE_VARIABLES, CACHE_DIR  # noqa: E402
from behind_pipeline.paths import PROJECT_ROOT as ROOT  # noqa: E402

REQUIREMENTS = ROOT / "requirements.txt"
PINNED_VENV = ROOT / ".venv"
CANARY_VENV = ROOT / ".cache" / "canary-venv"
CANARY_DIR = ROOT / ".cache" / "canary"
RESULTS_DIR = CANARY_DIR / "results"  # one junit XML (and one JSON of how it ran) per test run
PINNED_RESULTS_DIR = RESULTS_DIR / "pinned"  # the same for what `recheck` ran again in the pinned .venv
# The flags of the Makefile's test-unit and test-notebooks (tests/test_canary.py compares them with the Makefile).
PARALLEL = ["-p", "no:xdist"]
DURATIONS = ["--durations=30"]  # the log ends with the run's profile, as make test's does
NBVAL = ["--nbval-current-env", "--nbval-sanitize-with", "tests/sanitize.cfg"]
UNIT_TARGETS = ["tests"]
# Variables the Makefile exports besides the cache folders of behind_pipeline.paths.
MAKEFILE_SETTINGS = {"JUPYTER_PLATFORM_DIRS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
PIP = ["--disable-pip-version-check"]
INSTALL_TIMEOUT = 40 * 60  # seconds; pip can backtrack for a long time when releases conflict
# pip's progress lines, and its note on each package that a local extra index lacks: kept in the log, not echoed.
# (pip installs without --quiet: --quiet also drops "The conflict is caused by:" and the lines that explain it.)
UNSHOWN = re.compile(
    r"WARNING: Location '[^']*' is ignored|\s*(Requirement already satisfied|Collecting|Downloading|Using cached"
    r"|Obtaining|Preparing metadata|Building|Created wheel|Stored in directory|Installing build dependencies"
    r"|Getting requirements|Looking in indexes|Looking in links)"
)


def shown(path: Path) -> str:
    """A path as the reader sees it: relative to the project when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ---------------------------------------------------------------------------------------------------- running


def canary_environment(venv: Path = CANARY_VENV, root: Path = ROOT) -> dict[str, str]:
    """The process environment of the canary's tests: the Makefile's variables, the canary venv first on PATH."""
    env = dict(os.environ)
    for name, folder in _CACHE_VARIABLES.items():
        env[name] = str(root / ".cache" / folder.relative_to(CACHE_DIR))
    env.update(MAKEFILE_SETTINGS)
    # TMPDIR stays as `make test` has it: pytest's tmp_path folders go to the system's temporary folder (and are
    # removed by pytest), and a test of chapter 3 checks that a folder outside the project is printed unchanged.
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    return env


def run_logged(command: list[str], log: Path, env: dict, timeout: float | None = None) -> tuple[int, list[str]]:
    """Run ``command`` in the project root, echo its output and keep it in ``log``; (exit status, last lines)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    start = time.time()
    with open(log, "w") as sink:
        sink.write("$ " + " ".join(command) + "\n")
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert process.stdout is not None
        for line in process.stdout:
            if not UNSHOWN.match(line):
                sys.stdout.write(line)
            sink.write(line)
            tail = (tail + [line.rstrip("\n")])[-60:]
            if timeout and time.time() - start > timeout:
                process.kill()
                tail.append(f"(stopped by the canary after {timeout:.0f} s)")
                break
        returncode = process.wait()
    return returncode, tail


def pip_list(python: Path) -> dict[str, str]:
    """``{normalized name: version}`` installed in the environment of ``python`` (read only)."""
    if not python.exists():
        return {}
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", *PIP, "--format=json"], capture_output=True, text=True, check=True
    )
    return {normalize(item["name"]): item["version"] for item in json.loads(listed.stdout)}


def install(args) -> int:
    """Build the canary environment; record the newest releases, what was installed, and any conflict."""
    env = canary_environment()
    CANARY_DIR.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(RESULTS_DIR, ignore_errors=True)  # results of an older canary environment no longer apply
    requirements = REQUIREMENTS.read_text()
    pins = pinned_versions(requirements)
    state: dict = {"created": _now(), "pins": pins, "conflicts": [], "install_ok": False}
    if CANARY_VENV.exists() and not args.reuse:
        shutil.rmtree(CANARY_VENV)
    if not CANARY_VENV.exists():
        print(f"canary: creating {shown(CANARY_VENV)} with {args.python}", flush=True)
        subprocess.run([args.python, "-m", "venv", str(CANARY_VENV)], check=True, env=env)
    python = CANARY_VENV / "bin" / "python"

    # The newest release of each watched package, asked of pip (same index, same Python, no pre-releases).
    report_file = CANARY_DIR / "newest.json"
    code, tail = run_logged(
        [str(python), "-m", "pip", "install", *PIP, "--quiet", "--dry-run", "--no-deps", "--ignore-installed"]
        + ["--report", str(report_file), *CANARY_PACKAGES],
        CANARY_DIR / "logs" / "newest.log",
        env,
    )
    if code != 0:
        state["install_error"] = "pip could not find the newest releases: " + " / ".join(tail[-5:])
        return _save_state(state)
    newest = newest_from_report(json.loads(report_file.read_text()))
    newest.update({normalize(name): version for name, version in (args.release or [])})
    state["newest"] = newest
    print("canary: newest releases: " + ", ".join(f"{n} {v}" for n, v in newest.items()), flush=True)

    wanted: dict[str, str | None] = {name: newest.get(normalize(name)) for name in CANARY_PACKAGES}
    for attempt in range(len(CANARY_PACKAGES) + 1):
        text = rewrite_requirements(requirements, wanted)
        canary_requirements = CANARY_DIR / "requirements-canary.txt"
        canary_requirements.write_text(text)
        print(f"canary: pip install -r {shown(canary_requirements)} (attempt {attempt + 1})", flush=True)
        code, tail = run_logged(
            [str(python), "-m", "pip", "install", *PIP, "-r", str(canary_requirements)],
            CANARY_DIR / "logs" / f"install-{attempt + 1}.log",
            env,
            timeout=INSTALL_TIMEOUT,
        )
        if code == 0:
            state["install_ok"] = True
            break
        log = (CANARY_DIR / "logs" / f"install-{attempt + 1}.log").read_text()
        lines = pip_conflict(log) or tail[-15:]
        pinned_now = [name for name, version in wanted.items() if version is not None]
        culprits = conflicting_packages(lines, pinned_now)
        what = ", ".join(f"{name}=={wanted[name]}" for name in culprits) or "the canary requirements"
        state["conflicts"].append({"what": f"{what} would not install beside the pins", "lines": lines})
        if not culprits:
            state["install_error"] = "pip failed for a reason that names none of the watched packages"
            break
        for name in culprits:
            wanted[name] = None  # let pip choose the newest release that fits the other pins
    if not state["install_ok"]:
        state.setdefault("install_error", "pip could not resolve the requirements")
        return _save_state(state)
    code, tail = run_logged(
        [str(python), "-m", "pip", "install", *PIP, "--quiet", "--no-deps", "--no-build-isolation", "-e", "."],
        CANARY_DIR / "logs" / "install-project.log",
        env,
    )
    if code != 0:
        state["install_ok"] = False
        state["install_error"] = "the project itself would not install: " + " / ".join(tail[-5:])
        return _save_state(state)
    installed = pip_list(python)
    check = subprocess.run([str(python), "-m", "pip", "check", *PIP], capture_output=True, text=True, env=env)
    state["pip_check"] = [] if check.returncode == 0 else check.stdout.strip().splitlines()
    state["installed"] = installed
    state["changes"] = version_changes(pins, installed)
    state["other_changes"] = other_changes(pins, pip_list(PINNED_VENV / "bin" / "python"), installed)
    return _save_state(state)


def _save_state(state: dict) -> int:
    CANARY_DIR.mkdir(parents=True, exist_ok=True)
    (CANARY_DIR / "versions.json").write_text(json.dumps(state, indent=2) + "\n")
    return 0 if state.get("install_ok") else 2


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def split_targets(only: list[str] | None) -> tuple[list[str], list[str]]:
    """(unit test targets, notebook targets) of ``--only``: ``unit``, ``notebooks``, test files or notebooks."""
    if not only:
        return list(UNIT_TARGETS), list(NOTEBOOK_TARGETS)
    unit, notebooks = [], []
    for item in only:
        if item == "unit":
            unit += UNIT_TARGETS
        elif item in {"notebooks", "nbval"}:
            notebooks += NOTEBOOK_TARGETS
        elif item.split("::")[0].endswith(".ipynb") or item.rstrip("/") in NOTEBOOK_TARGETS:
            notebooks.append(item)
        else:
            unit.append(item)
    return unit, notebooks


def pytest_command(venv: Path, suite: str, targets: list[str], junit: Path) -> list[str]:
    """The Makefile's test-unit / test-notebooks command line, in the canary venv, writing a junit XML."""
    flags = PARALLEL + DURATIONS if suite == "unit" else PARALLEL + DURATIONS + NBVAL + ["--nbval"]
    return [str(venv / "bin" / "pytest"), *flags, *targets, f"--junitxml={junit}"]


def tree_state(root: Path = ROOT) -> str:
    """A fingerprint of the working tree (commit, changes, untracked files), read with git; "" outside git.

    ``recheck`` compares it with the canary run's: when the tree changed in between (someone re-executed a
    notebook), a break that passes with the pins may have been fixed in the tree, not caused by a release.
    """
    digest = hashlib.sha1()
    for command in (["rev-parse", "HEAD"], ["diff", "HEAD"], ["ls-files", "--others", "--exclude-standard"]):
        done = subprocess.run(["git", *command], cwd=root, capture_output=True)
        if done.returncode != 0:
            return ""
        digest.update(done.stdout)
    return digest.hexdigest()[:12]


def run_suites(venv: Path, folder: Path, unit: list[str], notebooks: list[str]) -> None:
    """Run the unit tests and notebooks given with ``venv``'s pytest; one junit XML and one run record per suite."""
    env = canary_environment(venv)
    folder.mkdir(parents=True, exist_ok=True)
    for suite, targets in (("unit", unit), ("notebooks", notebooks)):
        if not targets:
            continue
        label = run_label(suite, targets)
        junit = folder / f"{label}.xml"
        junit.unlink(missing_ok=True)
        print(f"canary: {suite} with {shown(venv)}: {' '.join(targets)}", flush=True)
        tree = tree_state()
        start = time.time()
        code, tail = run_logged(pytest_command(venv, suite, targets, junit), folder / f"{label}.log", env)
        seconds = round(time.time() - start, 1)
        run = {"label": label, "suite": suite, "targets": targets, "returncode": code, "seconds": seconds}
        run["tree"] = tree
        if not junit.exists():
            run["problem"] = f"pytest exited with status {code} and wrote no junit XML"
            run["output_tail"] = tail[-25:]
        elif code not in (0, 1):
            # 2: interrupted or collection errors, 3: internal error, 4: usage error (a flag nbval dropped?)
            run["problem"] = f"pytest exited with status {code} (collection or usage error; see the log)"
            run["output_tail"] = tail[-25:]
        (folder / f"{label}.json").write_text(json.dumps(run, indent=2) + "\n")


def run_tests(args) -> int:
    """Run the selected tests in the canary environment, then update the report."""
    if not (CANARY_DIR / "versions.json").exists() or not (CANARY_VENV / "bin" / "pytest").exists():
        print("canary: no canary environment yet: run `python tools/canary.py install` first", file=sys.stderr)
        return 2
    if not args.only:
        shutil.rmtree(RESULTS_DIR, ignore_errors=True)  # a full run replaces every part run before it
    run_suites(CANARY_VENV, RESULTS_DIR, *split_targets(args.only))
    return report()


def recheck_targets(cases: list[Case], only: list[str] | None = None) -> tuple[list[str], list[str]]:
    """What to run with the pins to tell drift from breakage: broken unit tests by id, notebooks whole (a cell
    alone would run without the cells before it); expected breaks are left out. ``only`` keeps the targets whose
    file it names."""
    unit, notebooks = [], []
    for case in cases:
        if case.outcome not in {"failed", "error"} or case.expected:
            continue
        if case.suite == "notebooks":
            target = case.notebook or case.test.split("::")[0]
            if target not in notebooks:
                notebooks.append(target)
        elif case.test not in unit:
            unit.append(case.test)
    if only:
        unit = [test for test in unit if test.split("::")[0] in only or test in only]
        notebooks = [notebook for notebook in notebooks if notebook in only]
    return unit, notebooks


def recheck(args) -> int:
    """Run what broke in the canary again in the pinned .venv (read only), so the report tells drift apart."""
    if not (PINNED_VENV / "bin" / "pytest").exists():
        print("canary: no pinned environment (.venv): run `make install` first", file=sys.stderr)
        return 2
    _runs, cases = load_results(RESULTS_DIR)
    mark_expected(cases, current_state().get("changes", []))
    unit, notebooks = recheck_targets(cases, args.only)
    if not unit and not notebooks:
        print("canary: nothing broke in the canary environment; nothing to recheck")
    else:
        run_suites(PINNED_VENV, PINNED_RESULTS_DIR, unit, notebooks)
    return report()






def run_label(suite: str, targets: list[str]) -> str:
    """A file name for one run's results: the whole suite, or a part named after its first target."""
    if targets == (UNIT_TARGETS if suite == "unit" else NOTEBOOK_TARGETS):
        return f"{suite}-all"
    digest = hashlib.sha1("\n".join(targets).encode()).hexdigest()[:8]
    first = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(targets[0].split("::")[0]).stem)[:40]
    return f"{suite}-{first}-{len(targets)}-{digest}"


def current_state() -> dict:
    """What ``install`` recorded, with the versions compared again (a newer rule applies to an older install)."""
    state_file = CANARY_DIR / "versions.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if "installed" in state:
        state["changes"] = version_changes(state["pins"], state["installed"])
    return state


def report() -> int:
    """Merge every result of the current canary environment into report.md / report.json and print a summary."""
    state = current_state()
    runs, cases = load_results(RESULTS_DIR)
    pinned_runs, pinned = load_results(PINNED_RESULTS_DIR)
    markdown, short, data = build_report(state, with_pinned_outcomes(cases, pinned), runs, pinned_runs)
    (CANARY_DIR / "report.md").write_text(markdown)
    (CANARY_DIR / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    print("\n== canary summary ==\n" + short)
    print(f"full report: {shown(CANARY_DIR / 'report.md')} (and report.json)")
    return 1 if has_findings(data) else 0


def release_option(text: str) -> tuple[str, str]:
    """``--release transformers==5.24.0``: try a given release instead of the newest."""
    name, _, version = text.partition("==")
    if not name or not version:
        raise argparse.ArgumentTypeError("expected NAME==VERSION")
    return name, version


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", nargs="?", default="all", choices=["all", "install", "test", "recheck", "report"])
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="TARGET",
        help="test: 'unit', 'notebooks', test files or notebooks (one part); recheck: the files to run again",
    )
    parser.add_argument(
        "--python",
        default=getattr(sys, "_base_executable", sys.executable),
        help="interpreter of the canary venv (default: the base interpreter of the one running this tool)",
    )
    parser.add_argument("--reuse", action="store_true", help="install into the existing canary venv")
    parser.add_argument(
        "--release",
        type=release_option,
        action="append",
        metavar="NAME==VERSION",
        help="install this release of a watched package instead of the newest (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.step == "install":
        return install(args)
    if args.step == "test":
        return run_tests(args)
    if args.step == "recheck":
        return recheck(args)
    if args.step == "report":
        return report()
    if install(args) != 0:
        return max(report(), 1)
    args.only = None
    if run_tests(args) == 0:
        return 0
    return recheck(args)  # something broke: does it break with the pins too?


if __name__ == "__main__":
    sys.exit(main())
