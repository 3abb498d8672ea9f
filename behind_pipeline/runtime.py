"""One call at the top of every notebook: fixed seed and threads, quiet progress bars, printed versions."""

import logging
import platform
import random
import socket
import time
import warnings
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np

# Two threads match the 2-core machines the book is measured on; a fixed count also fixes the order of
# floating-point reductions, so results repeat from run to run.
NUM_THREADS = 2
VERSIONED_PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "numpy")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch in one place."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_model() -> str:
    """The CPU's model name (``"AMD EPYC"`` on the machine this was written on), what a reader compares a measured
    time with.

    From ``/proc/cpuinfo`` on Linux; elsewhere, or where it has no model name, Python's description of the processor
    or, failing that, the architecture. The benchmark, the set-up timings and the chapters' run times record it.
    """
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def cpu_kind() -> str:
    """The kind of CPU, as far as its instructions change the book's numbers: vendor, PyTorch's vector kernels, and
    the int8 and bf16 instructions that quantized kernels use.

    For example ``"GenuineIntel AVX512 VNNI"`` or ``"AuthenticAMD AVX2"``. Machines of two kinds may differ in the
    last bits of a float, or more where a kernel quantizes (chapters 15-18); two machines of one kind have given
    the same outputs so far. ``tools/execute_notebooks.py`` records it in each notebook it runs, and
    :mod:`behind_pipeline.nbval_cpu` compares the cells tagged ``depends-on-cpu`` only on the kind that stored them.
    Off Linux there is no ``/proc/cpuinfo``: the kind is the machine's architecture and PyTorch's kernels.
    """
    import torch

    vendor, flags = platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id":
                vendor = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    parts = [vendor, torch.backends.cpu.get_cpu_capability()]
    # int8 dot products in one instruction, bf16 arithmetic, matrix tiles: quantized kernels take another path
    for name, instructions in (("VNNI", {"avx512_vnni", "avx_vnni"}), ("BF16", {"avx512_bf16"}),
                               ("AMX", {"amx_int8", "amx_bf16"})):
        if flags & instructions:
            parts.append(name)
    return " ".join(parts)


def setup_chapter(seed: int = 0, packages: tuple[str, ...] = ()) -> None:
    """Fix seed and thread count, silence progress bars that would change stored outputs, print versions."""
    from behind_pipeline.paths import configure_environment

    configure_environment()  # before the libraries below read their cache folders
    import datasets
    import torch
    import transformers

    seed_everything(seed)
    torch.set_num_threads(NUM_THREADS)
    # `import peft` and Trainer import bitsandbytes, which on CPUs with AVX512-BF16 logs a warning that an optional
    # kernel package (downloaded from the Hub) is missing; it changes nothing the book runs, so keep it out.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    names = VERSIONED_PACKAGES + tuple(packages)
    print(f"python {platform.python_version()} | " + " | ".join(f"{name} {version(name)}" for name in names))
    print(f"seed {seed} | torch threads {torch.get_num_threads()} | device cpu")


def format_ms(seconds: float) -> str:
    """Timings are printed through this one helper: milliseconds, one decimal."""
    return f"{seconds * 1000:.1f} ms"


def file_mib(path: str | Path) -> float:
    """Size of one file on disk in MiB (2**20 bytes): the one measure of "size on disk" the book prints."""
    return Path(path).stat().st_size / 2**20


def folder_mib(folder: str | Path, pattern: str = "*") -> float:
    """Size in MiB of the files under ``folder`` (subfolders included) whose names match ``pattern``, e.g.
    ``"*.safetensors"`` for the weights a reader would ship."""
    return sum(file_mib(path) for path in Path(folder).rglob(pattern) if path.is_file())


@contextmanager
def stopwatch():
    """``with stopwatch() as elapsed: ...`` then ``elapsed()`` gives seconds since the block started."""
    start = time.perf_counter()
    end = None

    def elapsed() -> float:
        return (end if end is not None else time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end = time.perf_counter()


def free_port(avoid: frozenset[int] = frozenset()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it), and none of ``avoid``:
    ports a process about to start will take for itself (Ray's dashboard agent takes 52365, in the kernel's range).
    Chapter 18's local server, chapter 12's and 20's ``accelerate launch`` and chapter 20's Ray Serve draw theirs here.
    """
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in avoid:
            return port


def show_source(obj) -> None:
    """Print the source of a package function, so a chapter shows the exact code that its tests check."""
    import inspect

    print(inspect.getsource(obj).rstrip())


def rounded(value, digits: int = 4):
    """Round every float inside nested lists/dicts/tuples, so printed results repeat across CPUs."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(rounded(item, digits) for item in value)
    return value
