"""The book's one training loop: fine-tune a sequence classifier with plain PyTorch (chapter 12 opens it up).

``make prepare`` trains the course classifier with it, and Part II's chapters (full fine-tuning, LoRA) call it
with other settings instead of writing a loop of their own. Each step: a batch of similar-length texts
(:func:`behind_pipeline.batching.length_grouped_batches`, little padding), forward with labels (the model returns
the cross-entropy loss), backward, gradient clipping, AdamW step, linear learning-rate schedule with warmup.
"""

import math
import sys
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from behind_pipeline.batching import length_grouped_batches


@dataclass
class TrainingSettings:
    """What a reader may change; the defaults are those of the course classifier (``make prepare``)."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.1  # share of the steps over which the learning rate climbs from 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # clip the gradient's norm: one odd batch cannot throw the weights far
    max_length: int = 128  # the longest review is 78 tokens: nothing is truncated
    max_steps: int | None = None  # stop early (small runs in the stored notebooks)
    seed: int = 0


@dataclass
class TrainingHistory:
    """The loss of every step and the learning rate it used, for loss curves."""

    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    padding_tokens: int = 0
    real_tokens: int = 0


def training_steps(examples: int, settings: TrainingSettings) -> int:
    """Optimizer steps of a run: batches per epoch times epochs, cut at ``max_steps``."""
    steps = settings.epochs * math.ceil(examples / settings.batch_size)
    return steps if settings.max_steps is None else min(steps, settings.max_steps)


def train_classifier(classifier, tokenizer, texts, labels, settings: TrainingSettings | None = None,
                     description: str = "training") -> TrainingHistory:
    """Fine-tune ``classifier`` in place on ``texts`` / ``labels``; only parameters with ``requires_grad`` learn.

    Same seed, thread count and data: the same weights, run after run.
    """
    settings = settings or TrainingSettings()
    texts, labels = list(texts), torch.as_tensor(list(labels))
    encoded = tokenizer(texts, truncation=True, max_length=settings.max_length)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    steps = training_steps(len(texts), settings)
    trainable = [parameter for parameter in classifier.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_fraction * steps), steps)
    generator = torch.Generator().manual_seed(settings.seed)
    history = TrainingHistory()
    classifier.train()  # dropout on while learning
    # In a terminal the bar redraws often; in a CI log every redraw is a line, so redraw every 30 s there.
    progress = tqdm(total=steps, desc=description, unit="batch", mininterval=0.1 if sys.stderr.isatty() else 30)
    with progress:
        for _ in range(settings.epochs):
            for batch in length_grouped_batches(lengths, settings.batch_size, generator):
                if len(history.losses) == steps:
                    break
                padded = tokenizer.pad({"input_ids": [encoded[index] for index in batch]}, return_tensors="pt")
                loss = classifier(**padded, labels=labels[batch]).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
                history.learning_rates.append(schedule.get_last_lr()[0])
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                history.losses.append(loss.item())
                history.real_tokens += int(padded["attention_mask"].sum())
                history.padding_tokens += int(padded["attention_mask"].numel() - padded["attention_mask"].sum())
                progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                progress.update()
    classifier.eval()
    return history
