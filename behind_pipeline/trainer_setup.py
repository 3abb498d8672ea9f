"""Fine-tuning with ``Trainer`` (chapter 11): a fresh head, tokenized splits, scores, and a Trainer like our loop.

Chapter 11 writes the ``TrainingArguments`` and the ``Trainer`` out in full; chapter 12 calls
:func:`trainer_like_loop` to run Trainer with the same settings as the book's own loop
(:func:`behind_pipeline.training.train_classifier`) and compares the two.
"""

from pathlib import Path

import numpy as np
import torch

from behind_pipeline.data import ID2LABEL, LABEL2ID
from behind_pipeline.metrics import classification_scores
from behind_pipeline.runtime import seed_everything
from behind_pipeline.training import TrainingSettings, training_steps

# Entries of `trainer.state.log_history` that measure the machine (seconds, throughput, floating-point operations),
# not the model: left out wherever a stored notebook prints the log.
MACHINE_KEYS = ("runtime", "per_second", "total_flos")


def fresh_classifier(model_id: str | None = None, seed: int = 0, **config_changes):
    """The encoder with a new, randomly initialised fresh/rotten head; the same head for the same ``seed``.

    ``config_changes`` go to the config, e.g. ``hidden_dropout_prob=0.0``.
    """
    from transformers import AutoModelForSequenceClassification

    from behind_pipeline.models import encoder_id

    seed_everything(seed)  # the head's initial weights come from torch's random generator
    return AutoModelForSequenceClassification.from_pretrained(
        model_id or encoder_id(), num_labels=len(ID2LABEL), id2label=ID2LABEL, label2id=LABEL2ID, **config_changes
    )


def tokenize_split(split, tokenizer, max_length: int = 128):
    """``input_ids``, ``attention_mask`` and ``label`` of each review, unpadded: the collator pads each batch."""
    return split.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=max_length), batched=True,
                     remove_columns=[name for name in split.column_names if name != "label"])


def compute_metrics(eval_pred) -> dict[str, float]:
    """Trainer's hook: accuracy and macro-F1 (scikit-learn, :mod:`behind_pipeline.metrics`) of the predictions.

    ``eval_pred`` holds the logits of the whole evaluation split as NumPy arrays, shape (examples, labels), and
    the gold label ids, shape (examples,). The prediction of a row is the label with the largest logit.
    """
    logits, labels = eval_pred
    return classification_scores(labels, np.asarray(logits).argmax(axis=-1))


def _rounded(key: str, value):
    """4 decimals; a learning rate to 3 significant digits (at 4 decimals 2.78e-4 and 3e-4 would both be 0.0003)."""
    if not isinstance(value, float):
        return value
    return float(f"{value:.3g}") if "learning_rate" in key else round(value, 4)


def without_machine_keys(entry: dict) -> dict:
    """One ``log_history`` entry without its timings, rounded (:func:`_rounded`): what a stored notebook can print."""
    return {key: _rounded(key, value) for key, value in entry.items()
            if not any(part in key for part in MACHINE_KEYS)}


def learning_rate_log():
    """A Trainer callback and the list it fills: the learning rate each optimizer step uses, in step order.

    Read from the optimizer just before its step (``on_pre_optimizer_step``), so every step is there, not only the
    logged ones.
    """
    from transformers import TrainerCallback

    rates: list[float] = []

    class LearningRateLog(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            rates.append(optimizer.param_groups[0]["lr"])

    return LearningRateLog(), rates


def tiny_bert_classifier(tokenizer, seed: int = 0):
    """A 2-layer BERT of width 32 with a fresh/rotten head, random weights, no dropout: a
    ``BertForSequenceClassification`` that trains in milliseconds, to show what Trainer does (not what a model learns).
    """
    from transformers import BertConfig, BertForSequenceClassification

    seed_everything(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=len(ID2LABEL), id2label=ID2LABEL,
                        label2id=LABEL2ID)
    return BertForSequenceClassification(config)


def quick_trainer(model, tokenizer, train_ds, output_dir: str | Path, **arguments):
    """A quiet CPU ``Trainer`` that takes the batches in order (no shuffling) and logs every step: for the chapter's
    short demonstrations. ``arguments`` go to ``TrainingArguments`` (batch size 8 unless given)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    options = {"output_dir": str(output_dir), "per_device_train_batch_size": 8, "learning_rate": 1e-3,
               "train_sampling_strategy": "sequential", "logging_steps": 1, "save_strategy": "no", "seed": 0,
               "report_to": "none", "disable_tqdm": True, "use_cpu": True}
    trainer = Trainer(model=model, args=TrainingArguments(**options | arguments), train_dataset=train_ds,
                      processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    return trainer


def trainer_like_loop(classifier, tokenizer, train_ds, settings: TrainingSettings, output_dir: str | Path,
                      sampling: str = "group_by_length"):
    """A ``Trainer`` with the settings of :func:`behind_pipeline.training.train_classifier`.

    Same optimizer (``torch.optim.AdamW``), learning rate, linear schedule with the same number of warmup steps,
    gradient clipping, batch size, epochs and step limit; the same weight decay only at 0 (Trainer exempts biases
    and LayerNorm weights, the loop does not); length-grouped batches, which Trainer's sampler groups and orders its
    own way (``sampling``: ``"sequential"`` reads the split in its order); a loss logged at every step. ``train_ds``
    is a tokenized split (:func:`tokenize_split`). No evaluation and no checkpoints during training: like the loop,
    it only trains.
    """
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    steps = training_steps(len(train_ds), settings)
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        # An int, computed as the loop does (int() rounds down). A float below 1 would be a share of the steps that
        # Trainer rounds up: 0.1 of 158 steps (all of train in batches of 64) is 15.8, 16 steps for Trainer.
        warmup_steps=int(settings.warmup_fraction * steps),
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        optim="adamw_torch",  # torch.optim.AdamW, as the loop (Trainer's default is its fused variant)
        train_sampling_strategy=sampling,
        seed=settings.seed,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(model=classifier, args=args, train_dataset=train_ds, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.remove_callback(PrinterCallback)  # with the progress bar off, it would print every log entry
    return trainer


def trainer_on_loop_batches(classifier, tokenizer, train_ds, settings: TrainingSettings, output_dir: str | Path):
    """:func:`trainer_like_loop`'s Trainer fed the loop's own batches in the loop's order.

    ``train_ds`` (with ``text`` and ``label``) is reordered as :func:`behind_pipeline.training.train_classifier`
    orders it (:func:`~behind_pipeline.batching.length_grouped_batches`, same seed) and read sequentially, cut
    into batches of the same size: the same batches only for one epoch over a split that divides into whole
    batches (a shorter batch at the end of a group would shift the cuts), so both are required. With dropout off,
    the two then take the same steps.
    """
    from behind_pipeline.batching import length_grouped_batches

    if settings.epochs != 1 or len(train_ds) % settings.batch_size:
        raise ValueError(f"the same batches need 1 epoch and whole batches: {settings.epochs} epochs, "
                         f"{len(train_ds)} reviews in batches of {settings.batch_size}")
    lengths = [len(ids) for ids in tokenizer(list(train_ds["text"]), truncation=True,
                                             max_length=settings.max_length)["input_ids"]]
    batches = length_grouped_batches(lengths, settings.batch_size, torch.Generator().manual_seed(settings.seed))
    in_loop_order = train_ds.select([index for batch in batches for index in batch])
    return trainer_like_loop(classifier, tokenizer, tokenize_split(in_loop_order, tokenizer, settings.max_length),
                             settings, output_dir, sampling="sequential")


def training_losses(log_history: list[dict]) -> list[float]:
    """The loss Trainer logged at each step (with ``logging_steps=1``), in step order."""
    return [entry["loss"] for entry in log_history if "loss" in entry and "eval_loss" not in entry]


def logged_learning_rates(log_history: list[dict]) -> list[float]:
    """The learning rate each logged step used (Trainer logs it before the scheduler moves on)."""
    return [entry["learning_rate"] for entry in log_history if "learning_rate" in entry]


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
