"""Training across machines (chapter 20): chapter 12's data-parallel step, launched as two "machines" on loopback.

On a real cluster each machine runs the same ``accelerate launch`` line with its own ``--machine_rank``, and every
one of them points ``--main_process_ip`` at machine 0::

    # on machine 0 (its address: 10.0.0.1)            # on machine 1
    accelerate launch --multi_gpu --num_machines 2 \\    accelerate launch --multi_gpu --num_machines 2 \\
      --num_processes 2 --machine_rank 0 \\               --num_processes 2 --machine_rank 1 \\
      --main_process_ip 10.0.0.1 --main_process_port 29500 ...   --main_process_ip 10.0.0.1 ...

``--num_processes`` counts the processes of the whole job (here 1 per machine). :func:`launch_two_machines` runs
both lines on this machine with ``--main_process_ip 127.0.0.1``: two launchers, each starting one process, meeting
over TCP on loopback as two machines would over the network, and running ``behind_pipeline.distributed`` (chapter
12's step). ``accelerate_two_machines.yaml`` beside this file is the same launch as an ``accelerate config`` file.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from behind_pipeline import distributed, paths
from behind_pipeline.runtime import free_port

MACHINES = 2
PROCESSES_PER_MACHINE = 1  # one process per "machine": the 2 cores of this machine, one each
MAIN_PROCESS_IP = "127.0.0.1"  # machine 0's address; on a cluster, its address on the network
ACCELERATE_CONFIG = Path(__file__).with_name("accelerate_two_machines.yaml")
LAUNCH_TIMEOUT_S = 300


def machine_command(rank: int, port: int, output: Path) -> list[str]:
    """The ``accelerate launch`` line machine ``rank`` runs (as a reader would type it)."""
    output = Path(output)
    if output.is_absolute():
        output = output.relative_to(paths.PROJECT_ROOT)
    return ["accelerate", "launch", "--multi_gpu", "--num_machines", str(MACHINES),
            "--num_processes", str(MACHINES * PROCESSES_PER_MACHINE), "--machine_rank", str(rank),
            "--main_process_ip", MAIN_PROCESS_IP, "--main_process_port", str(port),
            "--rdzv_backend", "static", "--same_network", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "behind_pipeline.distributed", "--output", str(output),
            "--examples", str(distributed.examples_file(output))]


def launch_two_machines(output: Path, timeout_s: float = LAUNCH_TIMEOUT_S) -> dict:
    """Start machine 0's and machine 1's launchers at once, wait for both, and return the JSON machine 0 wrote,
    with each launcher's exit code added (``machine_exit_codes``).

    Each launcher gets a process group of its own, so a run that hangs (machine 1 never reaching machine 0) is
    stopped whole after ``timeout_s``, with no process left behind.
    """
    port = free_port()
    output = paths.PROJECT_ROOT / Path(output)
    output.unlink(missing_ok=True)
    distributed.write_examples(distributed.examples_file(output))
    logs, launchers = [], []
    for rank in range(MACHINES):
        command = machine_command(rank, port, output)
        log = (output.parent / f"{output.stem}_machine{rank}.log").open("w")
        logs.append(log)
        # `python -m accelerate.commands.launch` is `accelerate launch` run by this environment's Python.
        launchers.append(subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", *command[2:]],
                                          cwd=paths.PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    deadline = time.monotonic() + timeout_s
    try:
        for launcher in launchers:
            launcher.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
        for log in logs:
            log.close()
    codes = [launcher.returncode for launcher in launchers]
    if codes != [0] * MACHINES or not output.exists():
        tails = "\n".join((output.parent / f"{output.stem}_machine{rank}.log").read_text()[-2000:]
                          for rank in range(MACHINES))
        raise RuntimeError(f"the two-machine launch failed (exit codes {codes}):\n{tails}")
    return json.loads(output.read_text()) | {"machine_exit_codes": codes}


def read_accelerate_config(path: Path = ACCELERATE_CONFIG) -> dict:
    """The ``accelerate config`` file as accelerate itself reads it (``ClusterConfig``), as a dict."""
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path)).to_dict()
