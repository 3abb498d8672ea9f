"""The training loop's step, data-parallel with ``accelerate``: 2 processes compute the update of 1 (chapter 12).

Run as a script under a launcher, it takes one optimizer step on ``GLOBAL_BATCH`` training reviews split between
the processes, and the main process writes what happened to a JSON file and the parameters after the step to a
safetensors file beside it::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        -m behind_pipeline.distributed --output .cache/distributed/two_processes.json \\
        --examples .cache/distributed/two_processes_examples.json

On a machine without GPUs ``Accelerator(cpu=True)`` makes the processes talk over gloo. Beware the obvious
spelling: ``accelerate launch --cpu --num_processes 2`` starts ONE process (its ``--cpu`` flag picks the
single-process launcher whatever ``--num_processes`` says); the JSON file records ``num_processes`` so a chapter
can print how many really ran. :func:`single_process_step` computes the same step in one process, for comparison.

The run also saves the all-reduced gradients of the same shares before clipping and the step
(:func:`data_parallel_gradients`, read back with :func:`saved_gradients`): chapter 20 compares them with
:func:`single_process_gradients`, the stricter parity (after one AdamW step equal parameters mostly show equal
gradient signs). It also sends 7 example indices through a prepared loader (:func:`uneven_gather`) and records
what ``gather`` and ``gather_for_metrics`` return when they do not split evenly over the processes.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from behind_pipeline import paths
from behind_pipeline.runtime import free_port

GLOBAL_BATCH = 8  # reviews in the step: 4 per process when 2 run
LEARNING_RATE = 2e-4  # the peak learning rate of the course classifier (behind_pipeline.prepare.SETTINGS)
MAX_GRAD_NORM = 1.0
SEED = 0
OUTPUT_DIR = paths.CACHE_DIR / "distributed"
# `--multi_gpu` picks torch's multi-process launcher (torchrun); with `Accelerator(cpu=True)` it runs on CPUs.
TWO_PROCESSES = ("--multi_gpu", "--num_processes", "2")
# The trap: `--cpu` picks the single-process launcher, whatever --num_processes says.
CPU_FLAG = ("--cpu", "--num_processes", "2")
# Passed explicitly: without them `accelerate launch` warns that it used defaults.
QUIET_DEFAULTS = ("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")


def step_examples() -> tuple[list[str], list[int], dict[int, str]]:
    """The first ``GLOBAL_BATCH`` reviews of the train split, their labels, and ``id2label``."""
    from behind_pipeline.data import ID2LABEL, load_rotten_tomatoes

    train = load_rotten_tomatoes()["train"].select(range(GLOBAL_BATCH))
    return list(train["text"]), list(train["label"]), dict(ID2LABEL)


def step_classifier(id2label: dict[int, str]):
    """The encoder with a new head, the same in every process (same seed), dropout off.

    With dropout on, each run draws its own masks and no two runs compute the same step; the comparison is about
    how the gradient is summed over processes, so dropout is switched off in both. (The launched processes build
    it here rather than with ``trainer_setup.fresh_classifier``, whose imports would slow each process's start.)
    """
    from transformers import AutoModelForSequenceClassification

    from behind_pipeline.models import encoder_id

    torch.manual_seed(SEED)
    return AutoModelForSequenceClassification.from_pretrained(
        encoder_id(), num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def tokenizer_for_step():
    from transformers import AutoTokenizer

    from behind_pipeline.models import encoder_id

    return AutoTokenizer.from_pretrained(encoder_id())


def single_process_step(examples=None) -> tuple[dict[str, torch.Tensor], float]:
    """One step of the training loop on all ``GLOBAL_BATCH`` reviews in one process: parameters after it, and loss."""
    texts, labels, id2label = examples or step_examples()
    tokenizer, classifier = tokenizer_for_step(), step_classifier(id2label)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    classifier.train()
    batch = tokenizer(texts, padding=True, return_tensors="pt")  # (8, longest)
    loss = classifier(**batch, labels=torch.tensor(labels)).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(classifier.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    return {name: tensor.detach().clone() for name, tensor in classifier.state_dict().items()}, loss.item()


def gradients(classifier) -> dict[str, torch.Tensor]:
    """Each parameter's ``.grad`` by name (a copy), as ``backward`` left it: before clipping and the step."""
    return {name: parameter.grad.detach().clone() for name, parameter in classifier.named_parameters()
            if parameter.grad is not None}


def single_process_gradients(examples=None) -> tuple[dict[str, torch.Tensor], float]:
    """The loop's backward on all ``GLOBAL_BATCH`` reviews in one process: the gradients, and the loss.

    The gradient is what a data-parallel run must reproduce exactly; comparing parameters after one AdamW step
    would mostly compare gradient signs (its first step moves each weight by about ``lr * sign(gradient)``).
    """
    texts, labels, id2label = examples or step_examples()
    tokenizer, classifier = tokenizer_for_step(), step_classifier(id2label)
    classifier.train()
    batch = tokenizer(texts, padding=True, return_tensors="pt")  # (8, longest)
    loss = classifier(**batch, labels=torch.tensor(labels)).loss
    loss.backward()
    return gradients(classifier), loss.item()


def data_parallel_gradients(accelerator, texts, labels, id2label) -> dict[str, torch.Tensor]:
    """The all-reduced gradients of :func:`data_parallel_step`'s backward (a fresh model, the same shares):
    after ``accelerator.backward`` every process holds the average of the processes' gradients."""
    tokenizer, classifier = tokenizer_for_step(), step_classifier(id2label)

    def collate(rows):
        encoding = tokenizer([text for text, _ in rows], padding=True, return_tensors="pt")
        return {**encoding, "labels": torch.tensor([label for _, label in rows])}

    loader = torch.utils.data.DataLoader(list(zip(texts, labels, strict=True)), collate_fn=collate,
                                         batch_size=GLOBAL_BATCH // accelerator.num_processes)
    classifier, loader = accelerator.prepare(classifier, loader)
    classifier.train()
    accelerator.backward(classifier(**next(iter(loader))).loss)
    return gradients(accelerator.unwrap_model(classifier))


def data_parallel_step(accelerator, texts, labels, id2label) -> tuple[dict[str, torch.Tensor], list[float], list[int]]:
    """The same step with ``accelerate``: each process gets its share of the global batch.

    ``accelerator.prepare`` wraps the model (DistributedDataParallel: after ``backward`` every process holds the
    *average* of the processes' gradients) and shards the data loader (process i gets batch i). Returns the
    parameters after the step, each process's loss and each process's number of reviews.
    """
    tokenizer, classifier = tokenizer_for_step(), step_classifier(id2label)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=LEARNING_RATE, weight_decay=0.0)

    def collate(rows):  # each process pads its own share to its own longest review
        encoding = tokenizer([text for text, _ in rows], padding=True, return_tensors="pt")
        return {**encoding, "labels": torch.tensor([label for _, label in rows])}

    # batch_size is per process: the global batch is batch_size * num_processes.
    loader = torch.utils.data.DataLoader(list(zip(texts, labels, strict=True)), collate_fn=collate,
                                         batch_size=GLOBAL_BATCH // accelerator.num_processes)
    classifier, optimizer, loader = accelerator.prepare(classifier, optimizer, loader)
    classifier.train()
    batch = next(iter(loader))  # this process's share: (4, longest of the share) with 2 processes
    loss = classifier(**batch).loss
    accelerator.backward(loss)  # also averages the gradients over the processes
    accelerator.clip_grad_norm_(classifier.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    losses = accelerator.gather(loss.detach().reshape(1)).tolist()
    sizes = accelerator.gather(torch.tensor([len(batch["labels"])])).tolist()
    state = accelerator.unwrap_model(classifier).state_dict()
    return {name: tensor.detach().clone() for name, tensor in state.items()}, losses, sizes


def uneven_gather(accelerator, count: int = 7, per_process: int = 2) -> dict[str, list[int]]:
    """Example indices 0 .. count-1 through a prepared loader: what ``gather`` and ``gather_for_metrics`` return.

    With ``even_batches=True`` (accelerate's default) a last batch that does not split evenly over the processes is
    filled up with examples from the start of the data, so every process gets a full batch; ``gather`` returns those
    repeats too, ``gather_for_metrics`` drops them (accelerator.py: it truncates the last gather to the remainder).
    """
    loader = accelerator.prepare(torch.utils.data.DataLoader(list(range(count)), batch_size=per_process))
    gathered, for_metrics = [], []
    for batch in loader:
        gathered += accelerator.gather(batch).tolist()
        for_metrics += accelerator.gather_for_metrics(batch).tolist()
    return {"gather": gathered, "gather_for_metrics": for_metrics}


def write_examples(path: Path) -> None:
    """Save the step's reviews for the launched processes: each then starts without loading the corpus."""
    texts, labels, id2label = step_examples()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"texts": texts, "labels": labels, "id2label": id2label}, indent=1) + "\n")


def read_examples(path: Path) -> tuple[list[str], list[int], dict[int, str]]:
    content = json.loads(path.read_text())
    return content["texts"], content["labels"], {int(key): name for key, name in content["id2label"].items()}


def main() -> None:
    paths.configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="JSON file to write (parameters go beside it)")
    parser.add_argument("--examples", help="JSON file with texts, labels and id2label (default: from the corpus)")
    parser.add_argument("--count-only", action="store_true", help="only record how many processes ran")
    args = parser.parse_args()
    from accelerate import Accelerator

    torch.set_num_threads(1)  # one core per process
    accelerator = Accelerator(cpu=True)
    report = {"num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
              "backend": accelerator.state.backend}
    if not args.count_only:
        examples = step_examples() if args.examples is None else read_examples(Path(args.examples))
        averaged = data_parallel_gradients(accelerator, *examples)  # chapter 20 compares these
        state, losses, sizes = data_parallel_step(accelerator, *examples)  # the step: losses, shares, parameters
        report |= {"process_losses": losses, "process_examples": sizes, "global_batch": sum(sizes),
                   "even_batches": accelerator.even_batches, **uneven_gather(accelerator)}  # chapter 12
    if accelerator.is_main_process:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        if not args.count_only:
            from safetensors.torch import save_file

            save_file({name: tensor.contiguous() for name, tensor in state.items()}, output.with_suffix(".safetensors"))
            save_file({name: tensor.contiguous() for name, tensor in averaged.items()}, gradients_file(output))
        output.write_text(json.dumps(report, indent=2) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the process group cleanly


def launch_command(launcher_flags: tuple[str, ...], output: Path, count_only: bool = False) -> list[str]:
    """The ``accelerate launch`` command line (as a reader would type it) that runs this module."""
    output = Path(output)
    if output.is_absolute():
        output = output.relative_to(paths.PROJECT_ROOT)
    script = ["--count-only"] if count_only else ["--examples", str(examples_file(output))]
    return ["accelerate", "launch", *launcher_flags, *QUIET_DEFAULTS, "-m", "behind_pipeline.distributed",
            "--output", str(output), *script]


def examples_file(output: Path) -> Path:
    """Where :func:`launch` puts the step's reviews for a run that writes ``output``."""
    return Path(output).with_name(Path(output).stem + "_examples.json")


def launch(launcher_flags: tuple[str, ...], output: Path, count_only: bool = False) -> dict:
    """Run :func:`launch_command` in a subprocess (from the project folder) and return the JSON it wrote.

    The launcher's own log (warnings, torchrun's notes) is kept out of the notebook; it is shown only when the
    run fails.
    """
    command = launch_command(launcher_flags, output, count_only)
    output = paths.PROJECT_ROOT / command[command.index("--output") + 1]
    output.unlink(missing_ok=True)
    if not count_only:
        write_examples(examples_file(output))
    # `python -m accelerate.commands.launch` is `accelerate launch` run by this environment's Python.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port())]
    result = subprocess.run([*launcher, *command[2:]], cwd=paths.PROJECT_ROOT, capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0 or not output.exists():
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(output.read_text())


def gradients_file(output: Path) -> Path:
    """Where the launched run saves the all-reduced gradients, beside its JSON file and the parameters."""
    return Path(output).with_name(Path(output).stem + "_gradients.safetensors")


def saved_gradients(output: Path) -> dict[str, torch.Tensor]:
    """The all-reduced gradients (before clipping and the step) the launched run saved beside its JSON file."""
    from safetensors.torch import load_file

    return load_file(gradients_file(output))


def saved_parameters(output: Path) -> dict[str, torch.Tensor]:
    """The parameters the launched run saved beside its JSON file."""
    from safetensors.torch import load_file

    return load_file(Path(output).with_suffix(".safetensors"))


if __name__ == "__main__":
    main()
