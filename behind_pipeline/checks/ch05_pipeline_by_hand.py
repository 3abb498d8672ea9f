"""Checkers for chapter 5's exercises: the pipeline's default ``function_to_apply``, labels in another order, and
a two-label classifier turned into a one-logit classifier that the pipeline scores with a sigmoid.

The library is the reference: the default rule is read off ``TextClassificationPipeline.postprocess`` itself, and
the rebuilt classifiers are run through ``pipeline("text-classification")``. Each checker tries the learner's code
on more than the course classifier (tiny random BERT and DistilBERT classifiers with 2 to 4 labels, an order whose
inverse is another order, biases far from zero) and never raises: every failure is a report line.
"""

import copy
import functools
import tempfile
from types import SimpleNamespace

import torch

from behind_pipeline.checks._core import CheckReport, course_tokenizer

# Reviews of different moods and lengths, run through the learner's classifiers and the pipeline.
REVIEWS = [
    "Two hours of my life I will never get back.",
    "A gorgeous, moving film with a script that keeps surprising you.",
    "The cast is wonderful, but the plot falls apart in the last act.",
    "Dull.",
    "Not as bad as the trailer suggests, though that is faint praise for a film this long and this loud.",
]
FUNCTIONS = ("softmax", "sigmoid", "none")
SCORE_TOLERANCE = 1e-5

# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: the function the pipeline applies when the call does not say
# ---------------------------------------------------------------------------------------------------------------

# (config fields, function_to_apply passed to the call): every branch of the rule, each side of num_labels == 1,
# a problem_type that overrides the label count, and a function_to_apply written into the config.
RULE_CASES = [
    ({"num_labels": 2}, None),
    ({"num_labels": 3}, None),
    ({"num_labels": 1}, None),
    ({"num_labels": 1, "problem_type": "regression"}, None),
    ({"num_labels": 3, "problem_type": "regression"}, None),
    ({"num_labels": 2, "problem_type": "multi_label_classification"}, None),
    ({"num_labels": 5, "problem_type": "multi_label_classification"}, None),
    ({"num_labels": 2, "problem_type": "single_label_classification"}, None),
    ({"num_labels": 2, "function_to_apply": "none"}, None),
    ({"num_labels": 1, "function_to_apply": "softmax"}, None),
    ({"num_labels": 2}, "sigmoid"),
    ({"num_labels": 1, "problem_type": "regression"}, "softmax"),
    ({"num_labels": 4, "problem_type": "multi_label_classification"}, "none"),
]


def _describe(fields: dict, requested: str | None) -> str:
    config = ", ".join(f"{key}={value!r}" for key, value in fields.items())
    return f"config({config})" + (f", function_to_apply={requested!r}" if requested else "")


def library_function_to_apply(config, requested: str | None = None) -> str:
    """Which function ``TextClassificationPipeline.postprocess`` applies for ``config``, found by running it.

    The pipeline's own ``postprocess`` scores one row of logits whose softmax, sigmoid and raw values all differ;
    whichever of the three it returned is its choice. Only ``model.config`` of the pipeline is read, so a stand-in
    object is enough.
    """
    from transformers.pipelines.text_classification import ClassificationFunction, TextClassificationPipeline

    logits = torch.linspace(1.7, -1.3, config.num_labels).reshape(1, -1)  # 1 label: softmax 1, sigmoid 0.85, none 1.7
    options = {} if requested is None else {"function_to_apply": ClassificationFunction[requested.upper()]}
    stand_in = SimpleNamespace(model=SimpleNamespace(config=config))
    results = TextClassificationPipeline.postprocess(stand_in, {"logits": logits}, top_k=None, _legacy=False, **options)
    by_label = {result["label"]: result["score"] for result in results}
    scores = torch.tensor([by_label[config.id2label[i]] for i in range(config.num_labels)])
    candidates = {"softmax": logits[0].softmax(dim=-1), "sigmoid": logits[0].sigmoid(), "none": logits[0]}
    return next(name for name, values in candidates.items() if torch.allclose(scores, values, atol=1e-6))


def _as_name(value) -> str | None:
    """The learner's answer as a lower-case function name, or None when it is not a string (an enum's value is)."""
    value = getattr(value, "value", value)
    return value.lower() if isinstance(value, str) else None


def _rule_hint(fields: dict, requested: str | None, expected: str, got: str | None) -> str:
    problem_type, num_labels = fields.get("problem_type"), fields["num_labels"]
    if requested is not None:
        return f"the call asked for {requested!r}: an explicit function_to_apply always wins"
    if "function_to_apply" in fields and got == fields["function_to_apply"]:
        return ("postprocess reads a function_to_apply stored in the config only in its last branch, which a model "
                "with at least one label never reaches")
    if problem_type == "regression":
        return "problem_type 'regression' comes first: a regression head's outputs are returned as they are"
    if problem_type == "multi_label_classification":
        return "problem_type 'multi_label_classification' means several labels can be true: one sigmoid per label"
    if num_labels == 1:
        return "a single logit cannot be softmaxed (softmax of one number is always 1): the pipeline uses sigmoid"
    return f"{num_labels} mutually exclusive labels: one distribution per text"


def check_function_to_apply(function_to_apply_for) -> CheckReport:
    """``function_to_apply_for(config, function_to_apply=None)`` -> "softmax", "sigmoid" or "none", as the pipeline."""
    from transformers import PretrainedConfig

    report = CheckReport("The pipeline's default function_to_apply")
    if not report.answered(function_to_apply_for, "function_to_apply_for"):
        return report
    for fields, requested in RULE_CASES:
        config = PretrainedConfig(**fields)
        expected = library_function_to_apply(config, requested)
        where = _describe(fields, requested)
        result = report.call(function_to_apply_for, config, requested, name="function_to_apply_for")
        if result is Ellipsis:
            return report
        got = _as_name(result)
        if got == expected:
            report.ok(f"{where} -> {expected!r}")
        elif got is None or got not in FUNCTIONS:
            report.fail(f"{where}: return one of {FUNCTIONS} as a string, got {result!r}")
        else:
            report.fail(f"{where}: got {got!r}, the pipeline applies {expected!r}: "
                        + _rule_hint(fields, requested, expected, got))
    return report


# ---------------------------------------------------------------------------------------------------------------
# Shared by exercises 2 and 3: classifiers to rebuild, and safe ways to run whatever the learner returns
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _course_classifier():
    """The course classifier, loaded once; learners only ever get deep copies of it."""
    from transformers import AutoModelForSequenceClassification

    from behind_pipeline.models import classifier_id

    return AutoModelForSequenceClassification.from_pretrained(classifier_id()).eval()


def tiny_classifier(model_type: str, labels: list[str], seed: int, problem_type: str | None = None):
    """A 1-layer random BERT or DistilBERT classifier (width 16) whose logits span several units, biases included.

    Freshly initialised heads give logits within a few hundredths of 0 and biases of exactly 0, which would let
    a wrong bias or a wrong row slip through; here every head weight is drawn large and each bias is different.
    """
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    names = {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)},
             "problem_type": problem_type}
    vocab_size = len(course_tokenizer())
    if model_type == "bert":
        config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=64, **names)
        model_class, dense = BertForSequenceClassification, "bert.pooler.dense"
    else:
        config = DistilBertConfig(vocab_size=vocab_size, dim=16, n_layers=1, n_heads=2, hidden_dim=32,
                                  max_position_embeddings=64, **names)
        model_class, dense = DistilBertForSequenceClassification, "pre_classifier"
    with torch.random.fork_rng():  # building it must not move the notebook's random state
        torch.manual_seed(seed)
        model = model_class(config).eval()
        with torch.no_grad():
            model.get_submodule(dense).weight.normal_(0, 1.0)
            model.classifier.weight.normal_(0, 0.8)
            model.classifier.bias.copy_(torch.linspace(1.0, -1.5, len(labels)) + 0.3 * torch.randn(len(labels)))
    return model


def _logits(report: CheckReport, model, where: str) -> torch.Tensor | None:
    """The learner's model run on REVIEWS through the book's prediction path, or None and a FIX line."""
    from behind_pipeline.predict import predict_logits

    try:
        with torch.inference_mode():
            library = model(**course_tokenizer()(REVIEWS, padding=True, return_tensors="pt")).logits
        logits = predict_logits(model, course_tokenizer(), REVIEWS, batch_size=2)
    except Exception as error:  # anything but a classifier fails somewhere in here
        report.fail(f"{where}: running the returned model failed ({type(error).__name__}: {error}); return a "
                    "...ForSequenceClassification model")
        return None
    if tuple(library.shape) != tuple(logits.shape):  # predict_logits sizes its output by config.num_labels
        report.fail(f"{where}: the model returns {library.shape[-1]} logit(s) per text but its config.num_labels "
                    f"is {model.config.num_labels}: change both together")
        return None
    return logits


def _pipeline_answers(report: CheckReport, model, where: str, **options) -> list | None:
    from transformers import pipeline

    try:
        return pipeline("text-classification", model=model, tokenizer=course_tokenizer())(list(REVIEWS), **options)
    except Exception as error:  # a broken config (missing names, wrong label count) fails inside the pipeline
        report.fail(f"{where}: pipeline() on the returned model failed ({type(error).__name__}: {error})")
        return None


def _fingerprint(model) -> tuple:
    """What must not change in the model handed to the learner: every weight, the label names, the label count."""
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return weights, dict(model.config.id2label), dict(model.config.label2id), model.config.num_labels


def _same_fingerprint(a: tuple, b: tuple) -> bool:
    return (a[1:] == b[1:] and a[0].keys() == b[0].keys()
            and all(a[0][name].shape == b[0][name].shape and torch.equal(a[0][name], b[0][name]) for name in a[0]))


def _output_layer(model):
    try:
        return model.classifier.weight.detach(), model.classifier.bias.detach()
    except AttributeError:
        return None, None


def _untouched(report: CheckReport, given, before: tuple, where: str) -> bool:
    return report.expect(_same_fingerprint(_fingerprint(given), before),
                         f"{where}: the classifier you were given is unchanged",
                         f"{where}: you changed the classifier you were given (its weights or its config): "
                         "work on copy.deepcopy(classifier) and return the copy")


def _has_config(report: CheckReport, result, where: str) -> bool:
    config = getattr(result, "config", None)
    if not (isinstance(getattr(config, "id2label", None), dict) and callable(result)):
        report.fail(f"{where}: return the new classifier (a model with a .config), got {type(result).__name__}")
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: the same classifier with its labels in another order
# ---------------------------------------------------------------------------------------------------------------

REORDER_CASES = {
    "the course classifier": [1, 0],
    "a tiny BERT": [2, 0, 1],  # a cycle: its inverse, [1, 2, 0], is another order
    "a tiny DistilBERT": [3, 1, 0, 2],  # inverse [2, 1, 3, 0]
}
LABEL_SETS = {3: ["negative", "neutral", "positive"], 4: ["anger", "joy", "fear", "surprise"]}


def _reorder_models():
    course = _course_classifier()
    yield "the course classifier", course
    yield "a tiny BERT", tiny_classifier("bert", LABEL_SETS[3], seed=1)
    yield "a tiny DistilBERT", tiny_classifier("distilbert", LABEL_SETS[4], seed=2)


def _reorder_mistake(logits, before, order, inverse, weight_ok: bool, bias_ok: bool) -> str:
    if torch.allclose(logits, before, atol=SCORE_TOLERANCE):
        return "the logits are still in the old order: permute the rows of the output layer's weight and bias"
    if torch.allclose(logits, before[:, inverse], atol=SCORE_TOLERANCE):
        return ("that is the inverse order: new label i is old label order[i], so the new weight is "
                "weight[order] (not weight[argsort(order)])")
    if weight_ok and not bias_ok:
        return "the weight rows are in the new order but the bias is not: permute classifier.bias the same way"
    if bias_ok and not weight_ok:
        return "the bias is in the new order but the weight rows are not: permute classifier.weight the same way"
    return "the logits are not the old logits in the new order"


def check_reorder_labels(reorder_labels) -> CheckReport:
    """``reorder_labels(classifier, order)``: a copy whose label i is the old label ``order[i]``, logits and names."""
    report = CheckReport("The same classifier, labels in another order")
    if not report.answered(reorder_labels, "reorder_labels"):
        return report
    for where, original in _reorder_models():
        order = REORDER_CASES[where]
        inverse = sorted(range(len(order)), key=order.__getitem__)
        where = f"{where}, order {order}"
        old_names = dict(original.config.id2label)
        before = _logits(report, original, where)
        old_weight, old_bias = _output_layer(original)
        given = copy.deepcopy(original)
        fingerprint = _fingerprint(given)
        result = report.call(reorder_labels, given, list(order), name="reorder_labels")
        if result is Ellipsis:
            return report
        if not _has_config(report, result, where):
            return report
        # 1. the names: label i is called what label order[i] was called, and label2id is its mirror
        expected_names = {i: old_names[order[i]] for i in range(len(order))}
        names = dict(result.config.id2label)
        if names == old_names and names != expected_names:
            report.fail(f"{where}: id2label is still {names}: rename the labels as well as moving the weights")
        else:
            report.expect(names == expected_names, f"{where}: id2label {expected_names}",
                          f"{where}: id2label is {names}, expected {expected_names}")
        mirror = {name: i for i, name in expected_names.items()}
        report.expect(dict(result.config.label2id) == mirror, f"{where}: label2id is its mirror",
                      f"{where}: label2id is {dict(result.config.label2id)}, expected {mirror}: update it with "
                      "id2label, or the two disagree")
        # 2. the logits: column i is the old column order[i]
        logits = _logits(report, result, where)
        if logits is None:
            return report
        expected = before[:, order]
        if logits.shape != expected.shape:
            report.fail(f"{where}: the model now gives {logits.shape[-1]} logits per text, expected "
                        f"{expected.shape[-1]}: reordering keeps every label")
        elif torch.allclose(logits, expected, atol=SCORE_TOLERANCE):
            report.ok(f"{where}: the new logits are the old ones in the new order")
        else:
            weight, bias = _output_layer(result)
            weight_ok = weight is not None and weight.shape == old_weight.shape and torch.allclose(
                weight, old_weight[order])
            bias_ok = bias is not None and bias.shape == old_bias.shape and torch.allclose(bias, old_bias[order])
            report.fail(f"{where}: {_reorder_mistake(logits, before, order, inverse, weight_ok, bias_ok)}")
        # 3. end to end: the pipeline gives every review the same best label and score as before
        theirs, mine = _pipeline_answers(report, original, where), _pipeline_answers(report, result, where)
        if theirs is not None and mine is not None:
            same = all(a["label"] == b["label"] and abs(a["score"] - b["score"]) < SCORE_TOLERANCE
                       for a, b in zip(mine, theirs, strict=True))
            report.expect(same, f"{where}: pipeline() answers every review as before",
                          f"{where}: pipeline() now answers {[(r['label'], round(r['score'], 4)) for r in mine]}, "
                          f"before {[(r['label'], round(r['score'], 4)) for r in theirs]}")
        _untouched(report, given, fingerprint, where)
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: two logits -> one, so that the pipeline's sigmoid returns P(label 1)
# ---------------------------------------------------------------------------------------------------------------

TWO_LABEL_SETS = {"a tiny BERT": ["spam", "ham"], "a tiny DistilBERT": ["NEGATIVE", "POSITIVE"]}


def _one_logit_models():
    yield "the course classifier", _course_classifier()
    # Trained like the course classifier, whose config says problem_type "single_label_classification".
    yield "a tiny BERT", tiny_classifier("bert", TWO_LABEL_SETS["a tiny BERT"], seed=3,
                                         problem_type="single_label_classification")
    yield "a tiny DistilBERT", tiny_classifier("distilbert", TWO_LABEL_SETS["a tiny DistilBERT"], seed=4)


def _one_logit_mistake(probability: torch.Tensor, before: torch.Tensor, old_bias, bias) -> str:
    if torch.allclose(probability, before[:, 1].sigmoid(), atol=SCORE_TOLERANCE):
        return ("that is sigmoid(z1), label 1's logit alone; softmax compares the two logits: "
                "P(label 1) = sigmoid(z1 - z0)")
    if torch.allclose(probability, before.softmax(dim=-1)[:, 0], atol=SCORE_TOLERANCE):
        return "that is P(label 0): the single row must be weight[1] - weight[0] (and bias[1] - bias[0])"
    if bias is not None and old_bias is not None and bias.numel() == 1 and not torch.allclose(
            bias.reshape(1), (old_bias[1] - old_bias[0]).reshape(1), atol=1e-6):
        return "the weight may be right but the bias is not: the new bias is bias[1] - bias[0]"
    return "sigmoid of the new logit is not softmax(old logits)[:, 1]"


def _reloads(report: CheckReport, model, where: str, expected: torch.Tensor) -> None:
    """The new classifier survives ``save_pretrained`` + ``from_pretrained`` with the same logits."""
    from transformers import AutoModelForSequenceClassification

    try:
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            reloaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    except Exception as error:  # a config the library refuses to load again, or a model it cannot save
        hint = ("; a saved config with problem_type 'single_label_classification' and one label does not load: "
                "set config.problem_type = None") if "problem_type" in str(error) else ""
        report.fail(f"{where}: save_pretrained + from_pretrained failed ({type(error).__name__}: {error}){hint}")
        return
    logits = _logits(report, reloaded, f"{where} (saved and loaded again)")
    if logits is not None:
        report.expect(logits.shape == expected.shape and torch.allclose(logits, expected, atol=1e-6),
                      f"{where}: saved and loaded again, it gives the same logit",
                      f"{where}: saved and loaded again, it gives other logits: keep the config and the output "
                      "layer in agreement")


def check_one_logit_classifier(one_logit_classifier) -> CheckReport:
    """``one_logit_classifier(classifier)``: a copy with one output whose pipeline score is P(label 1)."""
    report = CheckReport("Two logits into one: the pipeline's sigmoid gives P(label 1)")
    if not report.answered(one_logit_classifier, "one_logit_classifier"):
        return report
    for where, original in _one_logit_models():
        positive = original.config.id2label[1]
        before = _logits(report, original, where)
        _, old_bias = _output_layer(original)
        given = copy.deepcopy(original)
        fingerprint = _fingerprint(given)
        result = report.call(one_logit_classifier, given, name="one_logit_classifier")
        if result is Ellipsis:
            if any("problem_type" in line for line in report.lines):
                report.fail(f"{where}: a config with problem_type 'single_label_classification' refuses "
                            "num_labels=1; set config.problem_type = None first")
            return report
        if not _has_config(report, result, where):
            return report
        num_labels = result.config.num_labels
        if not report.expect(num_labels == 1, f"{where}: config.num_labels is 1",
                             f"{where}: config.num_labels is {num_labels}: the pipeline applies sigmoid only to a "
                             "model with one label (with more it applies softmax, and softmax of one logit is 1)"):
            return report
        names = dict(result.config.id2label), dict(result.config.label2id)
        report.expect(names == ({0: positive}, {positive: 0}), f"{where}: the one label is named {positive!r}",
                      f"{where}: id2label, label2id are {names}; name the single output "
                      f"{{0: {positive!r}}} and {{{positive!r}: 0}}")
        logits = _logits(report, result, where)
        if logits is None:
            return report
        expected = before.softmax(dim=-1)[:, 1]
        probability = logits[:, 0].sigmoid()
        if torch.allclose(probability, expected, atol=SCORE_TOLERANCE):
            report.ok(f"{where}: sigmoid(new logit) = softmax(old logits)[:, 1] on {len(REVIEWS)} reviews")
        else:
            report.fail(f"{where}: {_one_logit_mistake(probability, before, old_bias, _output_layer(result)[1])}")
        _reloads(report, result, where, logits)
        answers = _pipeline_answers(report, result, where)
        if answers is not None:
            labels = [answer["label"] for answer in answers]
            scores = torch.tensor([answer["score"] for answer in answers], dtype=torch.float32)
            report.expect(labels == [positive] * len(REVIEWS) and torch.allclose(scores, expected,
                                                                               atol=SCORE_TOLERANCE),
                          f"{where}: pipeline() returns {positive!r} with P({positive}) for every review",
                          f"{where}: pipeline() returns {list(zip(labels, scores.tolist(), strict=True))}, "
                          f"expected {positive!r} with {[round(p, 4) for p in expected.tolist()]}")
        _untouched(report, given, fingerprint, where)
    return report
