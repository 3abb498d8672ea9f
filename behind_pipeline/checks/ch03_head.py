"""Checkers for chapter 3's exercises: a new head from a checkpoint, sentence features, a linear probe.

Each checker tries the learner's code on more than the notebook's own example (another label count, another
architecture, another batch shape) and on values chosen to expose the usual mistakes (padding full of large
numbers, test labels that disagree with the training labels). None of them raises: every failure is a report line.
"""

import functools
import math
import tempfile
import warnings

import torch

from behind_pipeline.checks._core import CheckReport, course_encoder, named_mistakes

# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: a classifier for other labels, from the same body
# ---------------------------------------------------------------------------------------------------------------

THREE_LABELS = ["negative", "neutral", "positive"]
FOUR_LABELS = ["anger", "fear", "joy", "sadness"]


@functools.lru_cache(maxsize=4)  # the course classifier's two cases are loaded once per session, not per check
def _load_with_new_head(model_id: str, labels: tuple[str, ...]):
    """The reference answer: (classifier, sorted names of the tensors ``from_pretrained`` had to initialise)."""
    from transformers import AutoModelForSequenceClassification

    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        model_id, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True, output_loading_info=True)
    return classifier, sorted(set(info["missing_keys"]) | {name for name, *_ in info["mismatched_keys"]})


def _tiny_body_folder(folder: str) -> str:
    """A 1-layer DistilBERT *body* (no head at all) saved to ``folder``: another architecture, another width."""
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=120, dim=16, n_layers=1, n_heads=2, hidden_dim=32,
                              max_position_embeddings=32)
    with torch.random.fork_rng():  # building it must not move the notebook's random state
        torch.manual_seed(3)
        DistilBertModel(config).save_pretrained(folder)
    return folder


def _names(value) -> list | None:
    """The learner's list of tensor names as a sorted list, or None when it is not a collection."""
    if isinstance(value, str | bytes) or value is None:
        return None
    try:
        return sorted(value, key=str)
    except TypeError:
        return None


def _check_one_head(report: CheckReport, classifier_for_labels, model_id: str, labels: list[str], where: str) -> bool:
    """One call of the learner's function, graded against the reference; False stops the checker."""
    result = report.call(classifier_for_labels, model_id, list(labels), name="classifier_for_labels")
    if result is Ellipsis:
        if any("ignore_mismatched_sizes" in line for line in report.lines):
            report.fail(f"{where}: the checkpoint's head has another number of labels; from_pretrained refuses it "
                        "unless you pass ignore_mismatched_sizes=True")
        return False
    if not (isinstance(result, tuple | list) and len(result) == 2):
        report.fail(f"{where}: return a pair (classifier, initialized), got {type(result).__name__}")
        return False
    classifier, initialized = result
    reference, expected_new = _load_with_new_head(model_id, tuple(labels))
    ok = True
    # 1. it answers with one logit per label
    ids = torch.tensor([[2, 7, 11, 5, 3], [2, 9, 3, 0, 0]])
    try:
        with torch.inference_mode():
            logits = classifier(input_ids=ids, attention_mask=(ids != 0).long()).logits
        shape = tuple(logits.shape)
    except Exception as error:  # an AutoModel has no .logits; a broken object raises something else
        report.fail(f"{where}: running the classifier failed ({type(error).__name__}: {error}); load it with "
                    "AutoModelForSequenceClassification")
        return False
    ok &= report.expect(shape == (2, len(labels)), f"{where}: logits of shape (batch, {len(labels)})",
                        f"{where}: logits have shape {shape}, expected (2, {len(labels)}): one logit per label")
    # 2. the label names, both ways
    config = getattr(classifier, "config", None)
    id2label, label2id = getattr(config, "id2label", None), getattr(config, "label2id", None)
    expected_id2label = dict(enumerate(labels))
    expected_label2id = {label: i for i, label in enumerate(labels)}
    if id2label == expected_id2label:
        report.ok(f"{where}: id2label {id2label}")
    elif isinstance(id2label, dict) and {str(k) for k in id2label} == {str(i) for i in range(len(labels))} \
            and not all(isinstance(k, int) for k in id2label):
        ok = False
        report.fail(f"{where}: id2label has string keys {list(id2label)}: the ids are ints, id2label={{0: ..., ...}}")
    else:
        ok = False
        report.fail(f"{where}: id2label is {id2label}, expected {expected_id2label}: pass id2label=")
    if label2id != expected_label2id:
        ok = False
        report.fail(f"{where}: label2id is {label2id}, expected {expected_label2id}: passing id2label alone leaves "
                    "the checkpoint's old label2id in the config, pass label2id= too")
    # 3. the body (and any head tensor the checkpoint could fill) comes from model_id
    try:
        state = classifier.state_dict()
    except Exception:  # anything without a state_dict is simply not a model
        state = {}
    kept = {name: tensor for name, tensor in reference.state_dict().items() if name not in expected_new}
    same = all(name in state and isinstance(state[name], torch.Tensor) and state[name].shape == tensor.shape
               and torch.equal(state[name], tensor) for name, tensor in kept.items())
    ok &= report.expect(same, f"{where}: the {len(kept)} tensors stored in the checkpoint are the checkpoint's",
                        f"{where}: the body's weights differ from those stored at model_id: load the folder you are "
                        "given (not another model) and do not re-initialise anything yourself")
    # 4. what from_pretrained had to initialise, read from the loading info
    names = _names(initialized)
    if names is not None and names and all(isinstance(n, tuple | list) for n in names):
        report.fail(f"{where}: mismatched_keys holds (name, checkpoint shape, model shape) triples: keep the names")
        return False
    if names == expected_new:
        report.ok(f"{where}: initialized {expected_new if expected_new else 'nothing (the stored head fits)'}")
    else:
        ok = False
        hint = "read missing_keys and mismatched_keys from output_loading_info=True (both can hold head tensors)"
        report.fail(f"{where}: initialized {initialized!r}, expected {expected_new}: {hint}")
    return ok


def check_classifier_for_labels(classifier_for_labels) -> CheckReport:
    """``classifier_for_labels(model_id, labels)`` -> (classifier with a head for ``labels``, initialised names)."""
    from behind_pipeline.models import classifier_id

    report = CheckReport("A classifier for other labels, same body")
    if not report.answered(classifier_for_labels, "classifier_for_labels"):
        return report
    course_labels = [f"label {i}" for i in range(_course_num_labels())]
    with torch.random.fork_rng(), warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore")
        cases = [
            (classifier_id(), THREE_LABELS, "course classifier, 3 labels"),
            # The boundary: as many labels as the stored head has, so nothing new is needed.
            (classifier_id(), course_labels, f"course classifier, {len(course_labels)} labels"),
            (_tiny_body_folder(folder), FOUR_LABELS, "a DistilBERT body without a head, 4 labels"),
        ]
        for model_id, labels, where in cases:
            if not _check_one_head(report, classifier_for_labels, model_id, labels, where):
                break
    return report


@functools.cache
def _course_num_labels() -> int:
    from transformers import AutoConfig

    from behind_pipeline.models import classifier_id

    return AutoConfig.from_pretrained(classifier_id()).num_labels


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: sentence features from the body, [CLS] or mean
# ---------------------------------------------------------------------------------------------------------------

PAD_VALUE = 50.0  # padding positions hold this, so any average that lets them in is far off


def reference_features(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[CLS] vector or the mean of the real tokens' vectors, (batch, seq, hidden) -> (batch, hidden)."""
    if pooling == "cls":
        return last_hidden_state[:, 0]
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)  # (batch, seq, 1)
    return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1)


def _feature_inputs(lengths: list[int], seq_len: int, hidden: int, seed: int, view: bool):
    generator = torch.Generator().manual_seed(seed)
    if view:  # a transposed tensor: a view with strides other than a contiguous tensor's
        states = torch.randn(len(lengths), hidden, seq_len, generator=generator).transpose(1, 2)
    else:
        states = torch.randn(len(lengths), seq_len, hidden, generator=generator)
    mask = torch.tensor([[1] * n + [0] * (seq_len - n) for n in lengths])
    states[mask == 0] = PAD_VALUE
    return states, mask


def _feature_mistake(result: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, pooling: str) -> str:
    """Name the likely mistake behind a wrong features tensor."""
    mask3 = mask.unsqueeze(-1).double()
    states = states.double()
    last = mask.sum(dim=1) - 1
    guesses = {
        "you averaged the padding positions too: weight by attention_mask and divide by the real-token count":
            states.mean(dim=1),
        "padding is masked but you divided by the padded length: divide by attention_mask.sum(dim=1)":
            (states * mask3).sum(dim=1) / mask.shape[1],
        "that is the masked sum: divide it by the number of real tokens of each row":
            (states * mask3).sum(dim=1),
        "you took the last real token; [CLS] is the first token, position 0": states[torch.arange(len(mask)), last],
        "that is the [CLS] vector; pooling='mean' averages every real token": states[:, 0],
    }
    named = named_mistakes(result, guesses, lambda answer, guess: torch.allclose(answer, guess, atol=1e-4))
    if named:
        return named[0]
    if pooling == "mean":
        inner = mask3.clone()
        inner[:, 0] = 0
        inner[torch.arange(len(mask)), last] = 0
        if torch.allclose(result, (states * inner).sum(dim=1) / inner.sum(dim=1).clamp(min=1), atol=1e-4):
            return "you left out [CLS] and [SEP]: the mean runs over every real token, special ones included"
    return "the values differ from the expected features"


def check_sentence_features(sentence_features) -> CheckReport:
    """``sentence_features(last_hidden_state, attention_mask, pooling)`` for pooling "cls" and "mean"."""
    report = CheckReport("Sentence features: [CLS] or mean")
    cases = [  # (lengths, padded length, hidden, view?): full rows, one-token rows, two batch shapes
        ([6, 3, 1, 4], 6, 5, False),
        ([9, 2, 5], 9, 7, True),
    ]
    for seed, (lengths, seq_len, hidden, view) in enumerate(cases):
        states, mask = _feature_inputs(lengths, seq_len, hidden, seed, view)
        for pooling in ("cls", "mean"):
            where = f"pooling={pooling!r}, lengths {lengths}{' (a non-contiguous view)' if view else ''}"
            expected = reference_features(states, mask, pooling).double()
            # clone() keeps a view's strides; the copy keeps an in-place edit from changing our own inputs
            result = report.tensor_answer(sentence_features, states.clone(), mask.clone(), pooling,
                                          name="sentence_features", what=f"{where}: the features",
                                          shape=(len(lengths), hidden))
            if result is None:
                return report
            if torch.allclose(result, expected, atol=1e-4):
                report.ok(f"{where}: shape {(len(lengths), hidden)}, values right")
            else:
                report.fail(f"{where}: {_feature_mistake(result, states, mask, pooling)}")
                return report
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: a linear probe
# ---------------------------------------------------------------------------------------------------------------


def _blobs(generator: torch.Generator, counts: list[int], dims: int, spread: float = 4.0):
    """Features of ``len(counts)`` classes, each around its own axis, and their labels (shuffled)."""
    features, labels = [], []
    for label, count in enumerate(counts):
        centre = torch.zeros(dims)
        centre[label] = spread
        features.append(centre + torch.randn(count, dims, generator=generator))
        labels += [label] * count
    order = torch.randperm(sum(counts), generator=generator)
    return torch.cat(features)[order], torch.tensor(labels)[order]


def _accuracy_value(report: CheckReport, value, where: str) -> float | None:
    """The learner's accuracy as a float in [0, 1], or None with a FIX line."""
    try:
        number = float(torch.as_tensor(value).item()) if not isinstance(value, float | int) else float(value)
    except (TypeError, ValueError, RuntimeError):
        report.fail(f"{where}: return the accuracy as one number, got {type(value).__name__}")
        return None
    if not math.isfinite(number) or not 0 <= number <= 1:
        hint = ": a share, not a percentage" if 1 < number <= 100 else ""
        report.fail(f"{where}: accuracy {number} is not between 0 and 1{hint}")
        return None
    return number


def check_probe_accuracy(probe_accuracy) -> CheckReport:
    """``probe_accuracy(train_features, train_labels, test_features, test_labels)``: fit on train, score on test."""
    report = CheckReport("A linear probe")
    generator = torch.Generator().manual_seed(7)
    train_x, train_y = _blobs(generator, [160, 140], dims=12)
    test_x, test_y = _blobs(generator, [70, 90], dims=12)
    three_train_x, three_train_y = _blobs(generator, [90, 80, 100], dims=10)
    three_test_x, three_test_y = _blobs(generator, [50, 40, 60], dims=10)
    cases = [
        # (train, test, accept(accuracy), what a right probe gives, why a wrong one fails)
        ("2 classes", train_x, train_y, test_x, test_y, lambda a: a >= 0.95, "at least 0.95 on separable classes",
         "a linear model fitted on these features separates the classes almost perfectly"),
        # The test labels contradict the training labels: only a probe that fits on train and scores on test
        # gets (almost) everything wrong; one that fits or scores on the test data looks perfect.
        ("test labels flipped", train_x, train_y, test_x, 1 - test_y, lambda a: a <= 0.05,
         "close to 0, as it must be when the test labels contradict the training ones",
         "fit the probe on the training features and labels only, then score it on the test features and labels"),
        ("3 classes", three_train_x, three_train_y, three_test_x, three_test_y, lambda a: a >= 0.9,
         "at least 0.9 with 3 classes",
         "the probe must handle any number of classes (a logistic regression does)"),
    ]
    with warnings.catch_warnings():  # a solver's convergence warning would land in the notebook's stderr
        warnings.simplefilter("ignore")
        for where, tr_x, tr_y, te_x, te_y, accept, ok_message, hint in cases:
            result = report.call(probe_accuracy, tr_x.clone(), tr_y.clone(), te_x.clone(), te_y.clone(),
                                 name="probe_accuracy")
            if result is Ellipsis:
                return report
            accuracy = _accuracy_value(report, result, where)
            if accuracy is None:
                return report
            if not report.expect(accept(accuracy), f"{where}: accuracy {accuracy:.3f}, {ok_message}",
                                 f"{where}: accuracy {accuracy:.3f}: {hint}"):
                return report
    return report


# ---------------------------------------------------------------------------------------------------------------
# The measurement: both poolings of the frozen encoder, each read by the learner's probe
# ---------------------------------------------------------------------------------------------------------------

# Every 20th training review (503) to fit a probe, every 3rd test review (482) to score it: enough to see the
# gap between the two poolings, at a third of the cost of the whole test split (the frozen body runs on each).
PROBE_TRAIN_EVERY = 20
PROBE_TEST_EVERY = 3
PROBE_BATCH_SIZE = 64


@functools.cache
def _encoder_tokenizer():
    from transformers import AutoTokenizer

    from behind_pipeline.models import encoder_id

    return AutoTokenizer.from_pretrained(encoder_id())


def _frozen_features(report: CheckReport, sentence_features, texts: list[str]) -> dict | None:
    """Both kinds of features of ``texts`` from the frozen encoder, computed with the learner's function."""
    from behind_pipeline.batching import length_sorted_batches

    tokenizer, encoder = _encoder_tokenizer(), course_encoder()
    encoded = tokenizer(texts, truncation=True)["input_ids"]
    features = {pooling: torch.empty(len(texts), encoder.config.hidden_size) for pooling in ("cls", "mean")}
    for batch in length_sorted_batches([len(ids) for ids in encoded], PROBE_BATCH_SIZE):
        padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
        with torch.inference_mode():
            states = encoder(**padded).last_hidden_state  # (batch, seq, hidden)
        states = states.clone()  # a normal tensor again, outside inference mode
        for pooling in features:
            expected = reference_features(states, padded["attention_mask"], pooling).double()
            value = report.tensor_answer(sentence_features, states.clone(), padded["attention_mask"].clone(), pooling,
                                         name="sentence_features", what=f"sentence_features(..., {pooling!r})",
                                         shape=(len(batch), states.shape[-1]))
            if value is None:
                return None
            if not torch.allclose(value, expected, atol=1e-4):
                report.fail(f"sentence_features(..., {pooling!r}) is wrong on real reviews: pass its check first")
                return None
            features[pooling][batch] = value.float()
    return features


def check_pooling_probe(sentence_features, probe_accuracy) -> CheckReport:
    """The frozen encoder's [CLS] and mean features, each read by the learner's probe: the two accuracies."""
    from behind_pipeline.data import load_rotten_tomatoes

    report = CheckReport("[CLS] or mean: what a linear probe reads from the frozen encoder")
    if not (report.answered(sentence_features, "sentence_features")
            and report.answered(probe_accuracy, "probe_accuracy")):
        return report
    splits = load_rotten_tomatoes()
    train = splits["train"].select(range(0, len(splits["train"]), PROBE_TRAIN_EVERY))
    test = splits["test"].select(range(0, len(splits["test"]), PROBE_TEST_EVERY))
    train_y, test_y = torch.tensor(list(train["label"])), torch.tensor(list(test["label"]))
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_features = _frozen_features(report, sentence_features, list(train["text"]))
        test_features = _frozen_features(report, sentence_features, list(test["text"])) if train_features else None
        if test_features is None:
            return report
        report.ok(f"your features of {len(train):,} training and {len(test):,} test reviews equal the expected ones")
        majority = max(test_y.float().mean().item(), 1 - test_y.float().mean().item())
        report.ok(f"{'majority class':<24} accuracy {majority:.3f} (the baseline)")
        # One standard error of an accuracy measured on len(test) reviews: sqrt(p (1 - p) / n).
        for pooling, name in (("cls", "[CLS] vector probe"), ("mean", "mean of the tokens probe")):
            result = report.call(probe_accuracy, train_features[pooling], train_y, test_features[pooling], test_y,
                                 name="probe_accuracy")
            accuracy = None if result is Ellipsis else _accuracy_value(report, result, name)
            if accuracy is None:
                return report
            error = math.sqrt(accuracy * (1 - accuracy) / len(test))
            report.ok(f"{name:<24} accuracy {accuracy:.3f} (standard error {error:.3f})")
    return report
