# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 14. LoRA: fine-tuning 0.3% of the weights
#
# You will learn:
# - what LoRA adds to a frozen linear layer: a low-rank update $\frac{\alpha}{r} BA$, and why $B$ starts at zero,
# - how to build it by hand on the attention projections `query` and `value`, and count what it trains,
# - that `peft`'s `LoraConfig` / `get_peft_model` builds the same thing: same trainable count, same logits,
# - what it costs and buys against full fine-tuning: accuracy with its interval over movies, time per example at
#   the same batch size, file size on disk,
# - how `merge_and_unload` folds the update back into the weights, and what the rank changes at a fixed scale,
# - what `peft` leaves frozen (BERT's pooler), and QLoRA: LoRA on chapter 16's 4-bit model.
#
# Runs in about 79 s on 2 CPU cores, no GPU (measured). A training chapter: it fine-tunes eight small runs.

# %%
from behind_pipeline.runtime import setup_chapter

setup_chapter(seed=0, packages=("peft",))

# %% [markdown]
# The stored notebook runs the **small** setting: a few hundred training reviews, scored on 300 test reviews drawn
# at random. The **full** setting (`make full`) trains on all of train (full fine-tuning one epoch, LoRA three) and scores on the whole
# test split.

# %% tags=["parameters"]
# "small": the stored notebook, what the tests execute; "full": `make full`
RUN = "small"
# set by `make small` / `make full` (results/<run>); empty: nothing is recorded
RESULTS_DIR = ""
SIZES_PER_RUN = {
    # None: the whole split. LoRA moves few weights, so it wants a larger learning rate
    # than full fine-tuning. The rank sweep ("sweep", None: LoRA's own settings and
    # reviews) is a short run at the short runs' rate.
    "small": {
        "train_examples": 640,
        "test_examples": 300,
        "epochs": 1,
        "lora_epochs": 1,
        "full_batch_size": 16,
        "full_learning_rate": 3e-4,
        "lora_batch_size": 8,
        "lora_learning_rate": 3e-3,
        "sweep": None,
        # steps per model when timing a training step at LoRA's batch size
        "timing_steps": 4,
    },
    # LoRA gets 3 epochs at a lower rate: on all of train, one epoch at 3e-3 left it far
    # below full fine-tuning.
    "full": {
        "train_examples": None,
        "test_examples": None,
        "epochs": 1,
        "lora_epochs": 3,
        "full_batch_size": 64,
        "full_learning_rate": 2e-4,
        "lora_batch_size": 32,
        "lora_learning_rate": 1e-3,
        "sweep": {
            "examples": 2000,
            "epochs": 1,
            "batch_size": 16,
            "learning_rate": 3e-3,
        },
        "timing_steps": 8,
    },
}
# the stored values; `make full` replaces them
print(f"RUN={RUN!r} RESULTS_DIR={RESULTS_DIR!r}")

# %%
SIZES = SIZES_PER_RUN[RUN]  # here, after the cell papermill adds with `make full`'s RUN
print(f"RUN={RUN!r} {SIZES}")

# %% [markdown]
# ## The idea: learn a small update, keep the weight
#
# Full fine-tuning changes every weight matrix $W$ (shape `(out, in)`) of the model. LoRA (*Low-Rank Adaptation*,
# Hu et al., 2021) freezes $W$ and learns an update $\Delta W$ that is the product of two thin matrices,
# $A$ of shape `(r, in)` and $B$ of shape `(out, r)`, with a small rank $r$:
#
# $$
# h = W x + b + \frac{\alpha}{r}\, B A x .
# $$
#
# $A x$ squeezes the input into $r$ numbers, $B$ spreads them back to `out`. The layer learns $r \cdot (\text{in} +
# \text{out})$ numbers instead of $\text{in} \cdot \text{out}$. $\alpha$ is a fixed scale; dividing by $r$ keeps
# the size of the update about the same when one tries another rank with the same $\alpha$. For one of the
# encoder's 384 × 384 attention projections:

# %%
R, ALPHA = 8, 16  # rank and scale used throughout the chapter (alpha / r = 2)
# the attention projections LoRA adapts, as in the LoRA paper
TARGETS = ("query", "value")

d_in = d_out = 384  # all-MiniLM-L6-v2's hidden size
print(
    f"full update: {d_in * d_out:,} numbers | LoRA r={R}: "
    f"{R * (d_in + d_out):,} numbers "
    f"({R * (d_in + d_out) / (d_in * d_out):.1%})"
)

# %% [markdown]
# ## LoRA by hand
#
# `LoRALinear` wraps an existing `nn.Linear`: it freezes the layer, creates $A$ with random values and $B$ with
# zeros, and adds the scaled low-rank path to the layer's output. It never forms the `(out, in)` matrix $BA$:
# multiplying by $A$ first keeps the extra work at $r$ numbers per token.

# %%
from behind_pipeline.lora import LoRALinear, add_lora
from behind_pipeline.runtime import show_source

show_source(LoRALinear)

# %% [markdown]
# Why $B = 0$ and not $A = 0$ as well: with both at zero every gradient of the update is zero (the gradient of $B$
# is proportional to $Ax$, that of $A$ to $B^\top$), and nothing would ever learn. With $A$ random and $B = 0$ the
# update starts at exactly zero, yet $B$ gets a gradient at the first step.
#
# `add_lora` freezes the whole classifier, then wraps each `nn.Linear` whose name ends in one of the targets. The
# classification head is new (random), so it stays trainable.

# %%
show_source(add_lora)

# %%
import copy

from transformers import AutoTokenizer

from behind_pipeline.models import encoder_id
from behind_pipeline.trainer_setup import fresh_classifier

tokenizer = AutoTokenizer.from_pretrained(encoder_id())
# the encoder with a new fresh/rotten head, not trained yet
base_classifier = fresh_classifier(seed=0)
hand_classifier = copy.deepcopy(base_classifier)
wrapped = add_lora(hand_classifier, r=R, alpha=ALPHA, targets=TARGETS)
print(f"{len(wrapped)} layers wrapped, e.g. {wrapped[0]} and {wrapped[1]}")
print(hand_classifier.base_model.encoder.layer[0].attention.self.query)

# %% [markdown]
# What learns now: the 12 pairs $A$, $B$ and the head (a 384 × 2 weight and 2 biases).

# %%
from behind_pipeline.lora import parameter_counts

hand_trainable, hand_total = parameter_counts(hand_classifier)
lora_part = sum(
    p.numel()
    for n, p in hand_classifier.named_parameters()
    if "lora_" in n and p.requires_grad
)
head_part = hand_trainable - lora_part
print(
    f"trainable: {hand_trainable:,} of {hand_total:,} "
    f"({hand_trainable / hand_total:.2%})"
)
print(
    f"  LoRA factors: {lora_part:,} = {len(wrapped)} layers x {R} x (384 + "
    f"384) | head: {head_part:,}"
)
assert lora_part == len(wrapped) * R * (384 + 384)

# %% [markdown]
# Because $B$ starts at zero, the wrapped model computes exactly what the base model computes, on real reviews:

# %%
from behind_pipeline.data import load_rotten_tomatoes
from behind_pipeline.predict import predict_logits

splits = load_rotten_tomatoes()
sample_texts = splits["test"]["text"][:64]
base_logits = predict_logits(base_classifier, tokenizer, sample_texts)  # (64, 2)
hand_logits = predict_logits(hand_classifier, tokenizer, sample_texts)  # (64, 2)
diff = (base_logits - hand_logits).abs().max().item()
print(
    f"LoRA at step 0 vs base model, {len(sample_texts)} reviews: max abs diff "
    f"{diff:.1e}"
)
assert diff < 1e-6

# %% [markdown]
# ## The same with `peft`
#
# `peft` does this for any model: `LoraConfig` names the rank, $\alpha$ and the target layers, and `get_peft_model`
# wraps them. `task_type="SEQ_CLS"` tells it the model is a sequence classifier, so it also keeps the head
# trainable (`modules_to_save`). `lora_dropout=0.0` matches the hand version (the default is also 0).

# %%
from peft import LoraConfig, get_peft_model

lora_config = LoraConfig(
    task_type="SEQ_CLS",
    r=R,
    lora_alpha=ALPHA,
    target_modules=list(TARGETS),
    lora_dropout=0.0,
)
peft_classifier = get_peft_model(copy.deepcopy(base_classifier), lora_config)
peft_classifier.print_trainable_parameters()
peft_trainable, peft_total = parameter_counts(peft_classifier)
print(f"trainable: hand {hand_trainable:,} | peft {peft_trainable:,}")
assert peft_trainable == hand_trainable

# %% [markdown]
# The same count. peft's total is larger by the head's 770 parameters: it keeps the original head and trains a copy
# (so the original can be restored). Inside, a wrapped projection holds the frozen `base_layer`, $A$ and $B$ as
# `nn.Linear` layers without bias, and the scale $\alpha / r$:

# %%
peft_query = peft_classifier.base_model.model.base_model.encoder.layer[
    0
].attention.self.query
print(peft_query)
print(
    "scaling:",
    peft_query.scaling,
    "| B is zero:",
    bool((peft_query.lora_B["default"].weight == 0).all()),
)

# %% [markdown]
# ## Training: full fine-tuning against LoRA
#
# Both train with the book's loop (`train_classifier`, chapter 12), which optimizes only the parameters with
# `requires_grad`: all 22.7 million for full fine-tuning, the LoRA factors and the head for LoRA. Same reviews, same
# seed; batch sizes and learning rates are in the parameters cell (LoRA's learning rate is 5 to 10 times larger: few
# weights, each must move further). The test reviews are drawn at random from the whole test split, so that they
# come from many movies.

# %%
from behind_pipeline.training import TrainingSettings, train_classifier, training_steps

train_ds = (
    splits["train"]
    .shuffle(seed=0)
    .select(range(SIZES["train_examples"] or len(splits["train"])))
)
test_ds = (
    splits["test"]
    .shuffle(seed=0)
    .select(range(SIZES["test_examples"] or len(splits["test"])))
)
full_settings = TrainingSettings(
    epochs=SIZES["epochs"],
    batch_size=SIZES["full_batch_size"],
    learning_rate=SIZES["full_learning_rate"],
)
lora_settings = TrainingSettings(
    epochs=SIZES["lora_epochs"],
    batch_size=SIZES["lora_batch_size"],
    learning_rate=SIZES["lora_learning_rate"],
)
print(
    f"train {len(train_ds)} reviews | test {len(test_ds)} reviews of "
    f"{len(set(test_ds['movie_name']))} movies"
)
print(
    f"full fine-tune: {training_steps(len(train_ds), full_settings)} steps | "
    f"LoRA: {training_steps(len(train_ds), lora_settings)} steps"
)

# %% tags=["nbval-ignore-output"]
# Output not compared by the tests: wall-clock time depends on the machine and its load.
from IPython.utils.capture import capture_output

from behind_pipeline.runtime import stopwatch

full_classifier = copy.deepcopy(base_classifier)
# the progress bar stays out of the notebook
with stopwatch() as full_seconds, capture_output():
    full_history = train_classifier(
        full_classifier, tokenizer, train_ds["text"], train_ds["label"], full_settings
    )
with stopwatch() as lora_seconds, capture_output():
    lora_history = train_classifier(
        peft_classifier, tokenizer, train_ds["text"], train_ds["label"], lora_settings
    )
print(f"full fine-tune: {full_seconds():.1f} s | LoRA: {lora_seconds():.1f} s")

# %% [markdown]
# These two totals are not a comparison: the batch sizes differ (and, in the full run, the epochs). The scores on
# the test reviews come with a 95% interval from a bootstrap over movies (`cluster_bootstrap`, chapter 10): the
# test reviews of one movie are not independent draws, and the question is how the model does on new movies.

# %%
import numpy as np

from behind_pipeline.metrics import (
    classification_scores,
    cluster_bootstrap,
    cluster_bootstrap_interval,
)

test_labels = np.asarray(test_ds["label"])  # (test reviews,)
test_movies = list(test_ds["movie_name"])


def test_predictions(model):
    """Predicted label ids of ``model`` on ``test_ds``, through the book's prediction
    path."""
    return predict_logits(model, tokenizer, test_ds["text"]).argmax(dim=-1).numpy()


def scored(predictions):
    """Accuracy, macro-F1 and the 95% interval of accuracy over resampled movies."""
    low, high = cluster_bootstrap(
        lambda rows: float((predictions[rows] == test_labels[rows]).mean()), test_movies
    )
    return {**classification_scores(test_labels, predictions), "low": low, "high": high}


def difference(predictions_a, predictions_b):
    """accuracy(a) - accuracy(b) and its 95% interval, both on the same movies drawn."""
    observed = float(
        (predictions_a == test_labels).mean() - (predictions_b == test_labels).mean()
    )
    low, high = cluster_bootstrap_interval(
        test_labels, predictions_a, predictions_b, test_movies
    )
    return f"{observed:+.4f} (95% interval {low:+.4f} to {high:+.4f})"


full_predictions = test_predictions(full_classifier)
lora_predictions = test_predictions(peft_classifier)
full_scores, lora_scores = scored(full_predictions), scored(lora_predictions)
for name, scores, history in (
    ("full fine-tune", full_scores, full_history),
    (f"LoRA r={R}", lora_scores, lora_history),
):
    print(
        f"{name:15} accuracy {scores['accuracy']:.4f} ({scores['low']:.4f} to "
        f"{scores['high']:.4f}) | macro-F1 {scores['macro_f1']:.4f} | loss first "
        f"{history.losses[0]:.4f}, mean of last 5 {sum(history.losses[-5:]) / 5:.4f}"
    )
print(
    "LoRA - full fine-tune, accuracy:", difference(lora_predictions, full_predictions)
)

# %% [markdown]
# On these 300 reviews of 50 movies, full fine-tuning scores an accuracy of 0.7467 (95% interval 0.6930 to 0.7964)
# and LoRA 0.7400 (0.6816 to 0.7884). Their difference, -0.0067, has an interval from -0.0492 to +0.0342 that holds
# zero: no difference this run can see. The interval covers the choice of test movies, not the training seed (one
# seed here), so it is if anything too narrow.
#
# ## Time per example, at the same batch size
#
# To compare the cost of a training step, both run the same batches: the first reviews of the training set, in
# batches of LoRA's size, a few steps each, three times in turn (so that a busy moment of the machine hits both).

# %% tags=["nbval-ignore-output"]
# Output not compared by the tests: wall-clock time depends on the machine and its load.
from behind_pipeline.lora import seconds_per_training_example

timing_batch, timing_steps = SIZES["lora_batch_size"], SIZES["timing_steps"]
timed = {"full fine-tune": [], f"LoRA r={R}": []}
for _ in range(3):
    fresh = {
        "full fine-tune": copy.deepcopy(base_classifier),
        f"LoRA r={R}": get_peft_model(
            copy.deepcopy(base_classifier), copy.deepcopy(lora_config)
        ),
    }
    for name, model in fresh.items():
        with capture_output():
            timed[name].append(
                seconds_per_training_example(
                    model, tokenizer, train_ds["text"], train_ds["label"],
                    timing_batch, timing_steps,
                )
            )
per_example = {name: float(np.median(values)) for name, values in timed.items()}
for name, values in timed.items():
    print(
        f"{name:15} {per_example[name] * 1000:.1f} ms per example (median of 3: "
        f"{', '.join(f'{value * 1000:.1f}' for value in values)}), batch {timing_batch}"
    )
print(
    f"LoRA / full fine-tune: "
    f"{per_example[f'LoRA r={R}'] / per_example['full fine-tune']:.2f}"
)

# %% [markdown]
# LoRA still runs the whole forward pass and back-propagates through every layer (the gradient must reach the
# $A$, $B$ of the first layer); it saves the weight gradients of the frozen matrices and AdamW's state for them,
# so each step does less work, though far from in proportion to the trainable share (0.33%): the ratio above is
# nowhere near 0.0033.

# %% [markdown]
# ## The hand version computes what peft computes
#
# Copy the trained $A$, $B$ and head from the peft model into the hand-built one: the logits agree, so the few
# lines of `LoRALinear` are the whole method.

# %%
from behind_pipeline.lora import copy_from_peft

copied = copy_from_peft(hand_classifier, peft_classifier)
# (test reviews, 2)
peft_logits = predict_logits(peft_classifier, tokenizer, test_ds["text"])
hand_logits = predict_logits(hand_classifier, tokenizer, test_ds["text"])
diff = (peft_logits - hand_logits).abs().max().item()
print(
    f"{copied} tensors copied | hand vs peft, {len(test_ds)} reviews: max abs "
    f"diff {diff:.1e}"
)
assert diff < 1e-4

# %% [markdown]
# ## The adapter on disk
#
# `save_pretrained` on a peft model writes only what was trained, the adapter: $A$, $B$, the head, a small JSON
# config and a README (a model card). The full fine-tune has to ship the whole model.

# %%
import json

from behind_pipeline.lora import folder_size_mib
from behind_pipeline.paths import CACHE_DIR

adapter_dir = CACHE_DIR / "lora" / RUN / "adapter"
full_dir = CACHE_DIR / "lora" / RUN / "full-fine-tune"
peft_classifier.save_pretrained(adapter_dir)
full_classifier.save_pretrained(full_dir)
adapter_mib, full_mib = folder_size_mib(adapter_dir), folder_size_mib(full_dir)
print("adapter files:", sorted(path.name for path in adapter_dir.iterdir()))
saved = json.loads((adapter_dir / "adapter_config.json").read_text())
print(
    {key: saved[key] for key in ("r", "lora_alpha")},
    "| targets:",
    sorted(saved["target_modules"]),
    "| modules_to_save:",
    saved["modules_to_save"],
)
print(
    f"trained: {hand_trainable:,} float32 numbers = "
    f"{hand_trainable * 4 / 2**20:.2f} MiB"
)
print(
    f"adapter: {adapter_mib:.2f} MiB | full model: {full_mib:.1f} MiB "
    f"({full_mib / adapter_mib:.0f} times more)"
)

# %% [markdown]
# The adapter file holds the trained numbers and little else (a header with the names and shapes of its tensors). To use it, load the base model and put the adapter on top (`PeftModel.from_pretrained(base, folder)`).
#
# ## Merging: no extra cost at inference
#
# For serving, the update can be added into the weights once, $W' = W + \frac{\alpha}{r} BA$, and the extra path
# removed: `merge_and_unload` returns a plain transformers model, as fast as the base model. It changes the wrapped
# model in place, hence the copy.

# %%
merged_classifier = copy.deepcopy(peft_classifier).merge_and_unload()
merged_logits = predict_logits(merged_classifier, tokenizer, test_ds["text"])
diff = (merged_logits - peft_logits).abs().max().item()
print(
    f"{type(merged_classifier).__name__}, "
    f"{parameter_counts(merged_classifier)[1]:,} parameters, "
    "LoRA layers left: "
    f"{sum('lora' in name for name, _ in merged_classifier.named_modules())}"
)
print(f"merged vs unmerged, {len(test_ds)} reviews: max abs diff {diff:.1e}")
assert diff < 1e-4

# %% [markdown]
# The two differ only by float rounding: $(W + \frac{\alpha}{r}BA)x$ and $Wx + \frac{\alpha}{r}B(Ax)$ add the same
# numbers in another order.
#
# ## What the rank changes
#
# The update is scaled by $\alpha / r$. Keeping $\alpha$ fixed while the rank changes would change the scale with
# it (with $\alpha = 16$: 8 at $r = 2$, 0.5 at $r = 32$), so a sweep would move the rank and the step size at once.
# The sweep below keeps the scale: $\alpha = 2r$, a scale of 2 at every rank, as in the run above ($r = 8$,
# $\alpha = 16$). `peft` offers another rule, rsLoRA (`use_rslora=True`); its documentation, printed from the
# installed `LoraConfig`, and the scale `peft` gives a layer under each rule:

# %%
import torch

RANKS = (2, 8, 32)
print(LoraConfig.__dataclass_fields__["use_rslora"].metadata["help"])


def peft_scale(**options):
    """The scale peft gives a LoRA layer built with these ``LoraConfig`` options."""
    one_layer = torch.nn.Sequential(torch.nn.Linear(4, 4))
    config = LoraConfig(target_modules=["0"], **options)
    return get_peft_model(one_layer, config).base_model.model[0].scaling["default"]


for rank in RANKS:
    print(
        f"r={rank:2d}: alpha=16 -> {peft_scale(r=rank, lora_alpha=16):g} | "
        f"alpha=2r -> {peft_scale(r=rank, lora_alpha=2 * rank):g} | "
        "alpha=16, use_rslora -> "
        f"{peft_scale(r=rank, lora_alpha=16, use_rslora=True):.2f}"
    )
assert all(peft_scale(r=rank, lora_alpha=2 * rank) == 2 for rank in RANKS)

# %% [markdown]
# rsLoRA's scale $\alpha / \sqrt{r}$ still grows with the rank's square root at a fixed $\alpha$ (the claim "proven
# to work better" is its paper's, for large ranks; this chapter does not test it). Each rank below trains a fresh
# LoRA (same seed, $\alpha = 2r$) with the sweep's settings from the parameters cell: in the small setting those of
# the LoRA run above, on the same reviews, so the $r = 8$ run is the one above; in the full setting a short run on
# 2,000 reviews. Each score comes with its interval over movies, and each rank with its difference from $r = 8$ on
# the same test reviews.

# %%
sweep_sizes = SIZES["sweep"]  # None: LoRA's own settings and reviews
sweep_ds = train_ds.select(range(sweep_sizes["examples"])) if sweep_sizes else train_ds
sweep_settings = (
    TrainingSettings(
        epochs=sweep_sizes["epochs"],
        batch_size=sweep_sizes["batch_size"],
        learning_rate=sweep_sizes["learning_rate"],
    )
    if sweep_sizes
    else lora_settings
)
sweep = []
for rank in RANKS:
    if rank == R and sweep_settings == lora_settings and len(sweep_ds) == len(train_ds):
        # the run above: same reviews, seed, settings and alpha = 2r: the same weights
        model = peft_classifier
    else:
        config = LoraConfig(
            task_type="SEQ_CLS",
            r=rank,
            lora_alpha=2 * rank,
            target_modules=list(TARGETS),
            lora_dropout=0.0,
        )
        model = get_peft_model(fresh_classifier(seed=0), config)
        with capture_output():
            train_classifier(
                model, tokenizer, sweep_ds["text"], sweep_ds["label"], sweep_settings
            )
    sweep.append(
        {
            "r": rank,
            "trainable": parameter_counts(model)[0],
            "predictions": test_predictions(model),
        }
    )
    sweep[-1].update(scored(sweep[-1]["predictions"]))
rank_8 = next(row for row in sweep if row["r"] == R)["predictions"]
print(f"{len(sweep_ds)} training reviews, {len(test_ds)} test reviews, alpha = 2r")
for row in sweep:
    print(
        f"r={row['r']:2d}: trainable {row['trainable']:6,} | accuracy "
        f"{row['accuracy']:.4f} ({row['low']:.4f} to {row['high']:.4f}) | macro-F1 "
        f"{row['macro_f1']:.4f}"
    )
for row in sweep:
    if row["r"] != R:
        print(
            f"r={row['r']:2d} - r={R}, accuracy:",
            difference(row["predictions"], rank_8),
        )

# %% mystnb={"image": {"alt": "Accuracy of LoRA with alpha = 2r against trainable parameters for ranks 2, 8 and 32, each with its 95% interval over movies, read from the printed table above."}}
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.4))
trainable = [row["trainable"] for row in sweep]
accuracy = np.array([row["accuracy"] for row in sweep])
lows, highs = np.array([[row["low"], row["high"]] for row in sweep]).T
ax.errorbar(
    trainable,
    accuracy,
    yerr=[accuracy - lows, highs - accuracy],
    fmt="o-",
    capsize=4,
    label="accuracy, 95% interval over movies",
)
ax.plot(trainable, [row["macro_f1"] for row in sweep], "s--", label="macro-F1")
for row in sweep:
    ax.annotate(
        f"r={row['r']}",
        (row["trainable"], row["accuracy"]),
        textcoords="offset points",
        xytext=(4, 6),
    )
ax.set_xscale("log")
ax.set_xlabel("trainable parameters (log scale)")
ax.set_ylabel("score on the test reviews")
ax.set_title(f"LoRA rank sweep, alpha = 2r ({len(sweep_ds)} training reviews)")
ax.legend(loc="lower right")
plt.show()

# %% [markdown]
# With the scale held at 2 and the learning rate chosen for $r = 8$, the rank does matter in this run, against
# the more-is-better story: $r = 8$ scores 0.7400, $r = 2$ 0.6333 and $r = 32$ 0.6767, and both differences from
# $r = 8$ have intervals below zero (-0.1067, from -0.1812 to -0.0396; -0.0633, from -0.1198 to -0.0098). $r = 2$
# ends far lower in macro-F1 (0.3878) than in accuracy: its predictions lean to one class. What this supports is
# narrow: one seed, 80 steps, one learning rate for all ranks; a rank that trains badly at this rate might do
# better at another, which this sweep does not test.

# %% [markdown]
# ## What LoRA leaves frozen: the pooler
#
# `BertForSequenceClassification` does not read the `[CLS]` vector directly: its *pooler* first passes it through a
# 384 × 384 layer and a tanh, and the head reads that. Full fine-tuning trains the pooler with everything else.
# With `task_type="SEQ_CLS"`, `peft` adds the head's usual names, `classifier` and `score`, to `modules_to_save`
# (the line printed from its source below) and nothing more: under LoRA on `query` and `value`, the pooler stays
# as the checkpoint has it. And all-MiniLM-L6-v2 was trained as a sentence encoder that averages its token vectors:
# its pooler looks untrained, its bias exactly zero in the checkpoint (printed below), where a trained layer would
# have moved it.

# %%
import inspect

from peft import PeftModelForSequenceClassification
from safetensors import safe_open
from transformers.utils import cached_file

source = inspect.getsource(PeftModelForSequenceClassification.__init__)
print(next(line.strip() for line in source.splitlines() if "module_names = [" in line))
print("modules_to_save:", peft_classifier.peft_config["default"].modules_to_save)
with safe_open(cached_file(encoder_id(), "model.safetensors"), "pt") as checkpoint:
    pooler_bias = checkpoint.get_tensor("pooler.dense.bias")  # (384,)
print(
    f"pooler.dense.bias in the checkpoint: {int((pooler_bias == 0).sum())} of "
    f"{pooler_bias.numel()} values are 0.0"
)
pooler_trainable = any(
    p.requires_grad for n, p in peft_classifier.named_parameters() if ".pooler." in n
)
print("pooler trainable under LoRA (query, value):", pooler_trainable)

# %% [markdown]
# Two ways to let the adapted model change what the pooler does, each trained like the LoRA run above (same
# reviews, seed, rank, $\alpha$ and learning rate): train the pooler in full next to the head
# (`modules_to_save=["classifier", "pooler"]`), or put LoRA on every linear layer (`target_modules="all-linear"`:
# `peft` then wraps every `nn.Linear` but the head, the pooler's included).

# %%
variant_configs = {
    "LoRA r=8 (query, value) + pooler": LoraConfig(
        task_type="SEQ_CLS",
        r=R,
        lora_alpha=ALPHA,
        target_modules=list(TARGETS),
        modules_to_save=["classifier", "pooler"],
        lora_dropout=0.0,
    ),
    "LoRA r=8 all-linear": LoraConfig(
        task_type="SEQ_CLS",
        r=R,
        lora_alpha=ALPHA,
        target_modules="all-linear",
        lora_dropout=0.0,
    ),
}
variants = {}
for name, config in variant_configs.items():
    model = get_peft_model(fresh_classifier(seed=0), config)
    with stopwatch() as seconds, capture_output():
        train_classifier(
            model, tokenizer, train_ds["text"], train_ds["label"], lora_settings
        )
    variants[name] = {"model": model, "seconds": seconds()}
wrapped_names = sorted(variants["LoRA r=8 all-linear"]["model"].targeted_module_names)
print(
    f"all-linear wraps {len(wrapped_names)} layers, the pooler's included: "
    f"{any('pooler' in name for name in wrapped_names)}, the head: "
    f"{any('classifier' in name for name in wrapped_names)}"
)

# %%
for name, variant in variants.items():
    model = variant["model"]
    variant["trainable"], variant["total"] = parameter_counts(model)
    variant["predictions"] = test_predictions(model)
    variant["scores"] = scored(variant["predictions"])
    scores = variant["scores"]
    print(
        f"{name:32} trainable {variant['trainable']:7,} "
        f"({variant['trainable'] / variant['total']:.2%}) | accuracy "
        f"{scores['accuracy']:.4f} ({scores['low']:.4f} to {scores['high']:.4f}) | "
        f"macro-F1 {scores['macro_f1']:.4f}"
    )
for name, variant in variants.items():
    print(
        f"{name} - LoRA r={R} (query, value), accuracy:",
        difference(variant["predictions"], lora_predictions),
    )

# %% [markdown]
# POOLER_PROSE
#
# ## QLoRA: LoRA on a 4-bit model
#
# QLoRA (Dettmers et al., 2023) puts the frozen base in 4-bit NF4 (chapter 16) and trains LoRA factors in full
# precision on top: each quantized weight takes 4 bits instead of 32 (plus a scale per block of 64), and the
# gradient flows through the 4-bit layers, dequantized on the fly, to the factors. The guides' recipe: load with a `BitsAndBytesConfig`
# (chapter 16's 4-bit setting, the new head left out so that it can be trained), call `peft`'s
# `prepare_model_for_kbit_training` (it also turns on gradient checkpointing), then `get_peft_model` as above.

# %%
from behind_pipeline.bnb import linear_layer_types
from behind_pipeline.lora import qlora_classifier

show_source(qlora_classifier)
qlora = qlora_classifier(copy.deepcopy(lora_config))
qlora_trainable, qlora_total = parameter_counts(qlora)
print("linear layers:", linear_layer_types(qlora.base_model.model))
print(
    f"trainable: {qlora_trainable:,} (LoRA in fp32: {peft_trainable:,}) | "
    "gradient checkpointing:",
    qlora.base_model.model.is_gradient_checkpointing,
)
print(
    f"get_memory_footprint: QLoRA {qlora.get_memory_footprint() / 2**20:.1f} MiB | "
    f"LoRA on the fp32 model {peft_classifier.get_memory_footprint() / 2**20:.1f} MiB"
)

# %% [markdown]
# `get_memory_footprint` adds up the bytes of the parameters and buffers, nothing else: not the activations kept for
# the backward pass, the gradients or AdamW's state (those of the few trained parameters), nor what bitsandbytes
# allocates while it dequantizes. QLoRA trains with the same settings and reviews as the LoRA run:

# %% tags=["nbval-ignore-output"]
# Output not compared by the tests: wall-clock time depends on the machine and its load.
with stopwatch() as qlora_seconds, capture_output():
    qlora_history = train_classifier(
        qlora, tokenizer, train_ds["text"], train_ds["label"], lora_settings
    )
print(f"QLoRA: {qlora_seconds():.1f} s | LoRA: {lora_seconds():.1f} s")

# %%
qlora_predictions = test_predictions(qlora)
qlora_scores = scored(qlora_predictions)
print(
    f"QLoRA r={R}: accuracy {qlora_scores['accuracy']:.4f} ({qlora_scores['low']:.4f} "
    f"to {qlora_scores['high']:.4f}) | macro-F1 {qlora_scores['macro_f1']:.4f} | "
    f"loss first {qlora_history.losses[0]:.4f}, mean of last 5 "
    f"{sum(qlora_history.losses[-5:]) / 5:.4f}"
)
print("QLoRA - LoRA, accuracy:", difference(qlora_predictions, lora_predictions))

# %% [markdown]
# QLORA_PROSE

# %% [markdown]
# ## Full fine-tuning against LoRA
#
# The numbers the book's results table keeps (recorded only when `RESULTS_DIR` is set), each adapter saved to
# disk to give its size:

# %%
from behind_pipeline.results import record
from behind_pipeline.runtime import rounded


def saved_mib(model, name):
    """Size on disk of ``model``'s adapter, saved with ``save_pretrained``."""
    folder = CACHE_DIR / "lora" / RUN / name
    model.save_pretrained(folder)
    return folder_size_mib(folder)


def scores_only(scores):
    return rounded({key: scores[key] for key in ("accuracy", "macro_f1")})


lora_row = {"train_examples": len(train_ds), "epochs": SIZES["lora_epochs"]}
rows = [
    record(
        RESULTS_DIR,
        "14_lora",
        "full fine-tune",
        {
            **scores_only(full_scores),
            "train_examples": len(train_ds),
            "epochs": SIZES["epochs"],
            "train_seconds": round(full_seconds(), 1),
            "trainable_parameters": parameter_counts(full_classifier)[0],
            "trainable_share": 1.0,
            "size_mib": round(full_mib, 2),
        },
    ),
    record(
        RESULTS_DIR,
        "14_lora",
        f"LoRA r={R} (query, value)",
        {
            **scores_only(lora_scores),
            **lora_row,
            "train_seconds": round(lora_seconds(), 1),
            "trainable_parameters": hand_trainable,
            "trainable_share": round(hand_trainable / hand_total, 5),
            "size_mib": round(adapter_mib, 2),
        },
    ),
]
for name, variant in variants.items():
    rows.append(
        record(
            RESULTS_DIR,
            "14_lora",
            name,
            {
                **scores_only(variant["scores"]),
                **lora_row,
                "train_seconds": round(variant["seconds"], 1),
                "trainable_parameters": variant["trainable"],
                "trainable_share": round(variant["trainable"] / variant["total"], 5),
                "size_mib": round(saved_mib(variant["model"], f"variant-{len(rows)}"), 2),
            },
        )
    )
rows.append(
    record(
        RESULTS_DIR,
        "14_lora",
        f"QLoRA r={R} (query, value), NF4 base",
        {
            **scores_only(qlora_scores),
            **lora_row,
            "train_seconds": round(qlora_seconds(), 1),
            "trainable_parameters": qlora_trainable,
            # a packed 4-bit tensor counts two weights per element: the share is of the
            # fp32 model's parameters
            "trainable_share": round(qlora_trainable / hand_total, 5),
            "size_mib": round(saved_mib(qlora, "qlora"), 2),
        },
    )
)
print(
    f"{'model':38} {'accuracy':>8} {'macro-F1':>8} {'trainable':>11} "
    f"{'share':>7} {'MiB':>6}"
)
for row in rows:
    print(
        f"{row['model']:38} {row['accuracy']:8.4f} {row['macro_f1']:8.4f} "
        f"{row['trainable_parameters']:11,} "
        f"{row['trainable_share']:7.2%} {row['size_mib']:6.2f}"
    )

# %% tags=["nbval-ignore-output"]
# Output not compared by the tests: wall-clock time depends on the machine and its load.
for row in rows:
    print(f"{row['model']:38} train_seconds {row['train_seconds']:.1f}")

# %% [markdown]
# FINAL_PROSE
#
# ```{warning}
# Two ways a LoRA setup goes wrong:
#
# - **The head is frozen.** Without `task_type="SEQ_CLS"`, peft does not know the model has a new head: only the
#   LoRA factors train, and the random head stays random (the count below misses its 770 parameters).
# - **Target names that do not exist.** The names are those of the model's modules: BERT calls its projections
#   `query` / `value`, DistilBERT `q_lin` / `v_lin`, Llama `q_proj` / `v_proj`. peft refuses a list of names of
#   which none matches (below).
# ```

# %%
no_task = LoraConfig(
    r=R, lora_alpha=ALPHA, target_modules=list(TARGETS), lora_dropout=0.0
)
frozen_head = get_peft_model(fresh_classifier(seed=0), no_task)
print(
    f"without task_type: trainable {parameter_counts(frozen_head)[0]:,} (with "
    f"it: {peft_trainable:,})"
)
print(
    "head trainable:",
    any(
        p.requires_grad for n, p in frozen_head.named_parameters() if "classifier" in n
    ),
)

# %%
try:  # caught and printed, so that `make full` (papermill) runs the notebook to the end
    llama_names = LoraConfig(task_type="SEQ_CLS", target_modules=["q_proj", "v_proj"])
    get_peft_model(fresh_classifier(seed=0), llama_names)
except ValueError as error:
    print(f"{type(error).__name__} (a ValueError): {error}")

# %% [markdown]
# ## Summary
#
# SUMMARY_PROSE
#
# **Exercises**: [14_lora_exercises.ipynb](../exercises/14_lora_exercises.ipynb): merge a LoRA layer by hand, DoRA
# by hand (a magnitude and a direction per output feature, checked against `peft`'s `use_dora=True`), and the
# trainable count of any LoRA setting predicted from the config.
