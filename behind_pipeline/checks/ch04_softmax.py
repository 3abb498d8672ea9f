"""Checkers for the exercises of chapter 4: a masked softmax, the ECE with two binnings, a temperature folded in."""

import copy
import functools
from contextlib import contextmanager

import numpy as np
import torch

from behind_pipeline.checks._core import CheckReport, course_tokenizer, named_mistakes
from behind_pipeline.runtime import rounded

# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: masked softmax
# ---------------------------------------------------------------------------------------------------------------

NEG_INF = float("-inf")


def reference_masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the kept positions (``mask`` True) along ``dim``; masked positions 0; a row with none kept: 0."""
    probs = torch.softmax(scores.double().masked_fill(~mask.bool(), NEG_INF), dim=dim)
    return probs.nan_to_num(0.0)  # a row of only -inf gives nan (-inf - (-inf)); nothing is kept there: 0


def _library_softmaxes() -> list[tuple[object, str, str]]:
    """(owner, attribute, how a learner writes it) for every public softmax the exercise asks not to call."""
    import scipy.special  # the chapter's stack has SciPy: its softmax is a library one too

    functional = torch.nn.functional
    return [(scipy.special, "softmax", "scipy.special.softmax"),
            (scipy.special, "log_softmax", "scipy.special.log_softmax"),
            (torch, "softmax", "torch.softmax"), (torch, "log_softmax", "torch.log_softmax"),
            (functional, "softmax", "F.softmax"), (functional, "log_softmax", "F.log_softmax"),
            (torch.Tensor, "softmax", "tensor.softmax"), (torch.Tensor, "log_softmax", "tensor.log_softmax"),
            (torch.special, "softmax", "torch.special.softmax"),
            (torch.special, "log_softmax", "torch.special.log_softmax")]


@contextmanager
def watching_library_softmax():
    """While active, calls to the library's softmax functions (also through ``nn.Softmax``) are recorded.

    Yields the list the names are appended to; the functions still work, so the learner's code runs normally and
    the checker can say both what is right in the values and that a forbidden shortcut was used.
    """
    used: list[str] = []
    saved = []
    for owner, attribute, label in _library_softmaxes():
        original = getattr(owner, attribute)

        def spy(*args, _original=original, _label=label, **kwargs):
            used.append(_label)
            return _original(*args, **kwargs)

        saved.append((owner, attribute, attribute in vars(owner), vars(owner).get(attribute)))
        setattr(owner, attribute, spy)
    try:
        yield used
    finally:
        for owner, attribute, was_own, own_value in saved:
            if was_own:
                setattr(owner, attribute, own_value)
            else:  # torch.Tensor inherits softmax from its C base: remove the shadow, the base shows again
                delattr(owner, attribute)


# The autograd steps of torch's own softmax kernels (every library spelling ends in one of them); a learner's own
# torch.autograd.Function is named after its class, and is not one of these.
LIBRARY_SOFTMAX_STEPS = ("SoftmaxBackward0", "LogSoftmaxBackward0")


def softmax_steps_in_graph(masked_softmax, scores: torch.Tensor, mask: torch.Tensor, dim: int) -> set[str]:
    """The library softmax steps autograd records while ``masked_softmax`` runs on a copy of ``scores``.

    The spy above sees calls made through ``torch.softmax`` and its relatives, but not a function bound to a name
    before it started (``from torch import softmax``); autograd records that one too (``SoftmaxBackward0``). Empty
    when the call fails or leaves autograd (NumPy, ``detach``): then the spy's verdict stands alone.
    """
    leaf = scores.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            result = masked_softmax(leaf, mask.clone(), dim=dim)
    except Exception:  # noqa: BLE001 - any failure was already reported by the graded call
        return set()
    found, seen, stack = set(), set(), [getattr(result, "grad_fn", None)]
    while stack:
        step = stack.pop()
        if step is None or step in seen:
            continue
        seen.add(step)
        if type(step).__name__ in LIBRARY_SOFTMAX_STEPS:
            found.add(type(step).__name__)
        stack.extend(parent for parent, _ in step.next_functions)
    return found


def _masked_cases() -> list[dict]:
    """Each case models one way a masked softmax goes wrong; ``hint`` says what to fix when it does."""
    generator = torch.Generator().manual_seed(4)
    attention = 10 * torch.randn(2, 3, 5, generator=generator)  # (batch, heads, seq): spans far more than 1
    padding = torch.tensor([[True, True, True, True, True], [True, True, True, False, False]]).view(2, 1, 5)
    grid = torch.tensor([[2.0, -1.0, 0.5, 3.0], [0.0, 4.0, -2.0, 1.0], [1.5, 1.5, -3.0, 0.0]])
    grid_mask = torch.tensor([[True, True, False, True], [True, False, True, True], [False, True, True, True]])
    return [
        dict(name="3 rows, one position masked in each", scores=grid, mask=grid_mask, dim=-1,
             hint="masked positions get probability 0 and each row sums to 1 over its kept positions"),
        dict(name="a row spanning 1000 (-500, 0, 500)", scores=torch.tensor([[-500.0, 500.0, 0.0]]),
             mask=torch.tensor([[True, True, True]]), dim=-1,
             hint="shift by the row's max: a shift by the min or the mean still leaves exp(500) or more, which "
                  "overflows"),
        dict(name="a masked position holding 1000 (garbage in a padding slot)",
             scores=torch.tensor([[0.0, 1.0, 1000.0]]), mask=torch.tensor([[True, True, False]]), dim=-1,
             hint="take the max over the kept positions only: shifting by the masked 1000 makes every kept "
                  "exp(z - 1000) round to 0, and 0 / 0 is nan"),
        dict(name="every kept logit very negative (-1000, -1001)", scores=torch.tensor([[-1000.0, -1001.0, 5.0]]),
             mask=torch.tensor([[True, True, False]]), dim=-1,
             hint="exp(-1000) is 0 in any float: subtract the max of the kept logits before exp"),
        dict(name="rows at very different scales ([1000, 999] and [0, -1])",
             scores=torch.tensor([[1000.0, 999.0], [0.0, -1.0]]), mask=torch.ones(2, 2, dtype=torch.bool), dim=-1,
             hint="take the max of each row (keepdim=True), not of the whole tensor"),
        dict(name="a row with every position masked", scores=torch.tensor([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0]]),
             mask=torch.tensor([[False, False, False], [True, False, True]]), dim=-1,
             hint="a row with nothing kept must be all 0: there -inf - (-inf) is nan, and a finite fill value "
                  "such as -1e9 makes it uniform"),
        dict(name="dim=0 on a transposed (non-contiguous) view", scores=grid.T, mask=grid_mask.T, dim=0,
             hint="normalise along `dim`, and use reshape/indexing that works on views (`.view` needs contiguous)"),
        dict(name="dim=0 with a column where nothing is kept", scores=grid,
             mask=grid_mask & torch.tensor([True, True, False, True]), dim=0,
             hint="a column with nothing kept must be all 0 along `dim`, whichever `dim` that is"),
        dict(name="(batch 2, heads 3, seq 5) scores with a (2, 1, 5) padding mask", scores=attention, mask=padding,
             dim=-1, hint="the mask broadcasts over the heads: combine it with `masked_fill` or `torch.where`"),
        dict(name="(batch 2, heads 3, seq 5) scores, dim=1 (across the heads), a (2, 3, 1) mask",
             scores=attention, mask=torch.tensor([[True, False, True], [True, True, True]]).view(2, 3, 1), dim=1,
             hint="normalise along the `dim` you are given, on any number of dimensions (not only -1 or 0)"),
        dict(name="float64 scores a hair apart ([1000, 1000.00001])",
             scores=torch.tensor([[1000.0, 1000.00001, 3.0]], dtype=torch.float64),
             mask=torch.tensor([[True, True, False]]), dim=-1,
             hint="compute in the scores' own dtype (in float32, 1000 and 1000.00001 are one number), with no "
                  "epsilon or clamp"),
        dict(name="float64 scores", scores=grid.double(), mask=grid_mask, dim=-1,
             hint="with float64 scores the answer must be right to 1e-6: is an epsilon or a clamp left in, or a "
                  "step done in float32?"),
    ]


def _describe_rows(tensor: torch.Tensor, digits: int = 4) -> str:
    return str(rounded(tensor.tolist(), digits))


def check_masked_softmax(masked_softmax) -> CheckReport:
    """``masked_softmax(scores, mask, dim=-1)``: softmax over kept positions, built without a library softmax."""
    report = CheckReport("Masked softmax")
    if not report.answered(masked_softmax, "masked_softmax"):
        return report
    used_library = set()
    for case in _masked_cases():
        scores, mask, dim = case["scores"], case["mask"], case["dim"]
        scores_before, mask_before = scores.clone(), mask.clone()
        with watching_library_softmax() as used:
            result = report.call(masked_softmax, scores, mask, dim=dim, name="masked_softmax")
        used_library.update(used)
        if result is Ellipsis:
            return report
        name = case["name"]
        if not (torch.equal(scores, scores_before) and torch.equal(mask, mask_before)):
            report.fail(f"{name}: your function changed the scores or the mask it was given (an in-place "
                        "`masked_fill_` or `-=`?): compute a new tensor instead")
            return report
        expected = reference_masked_softmax(scores, mask, dim=dim)
        tensor = report.tensor(result, f"{name}: result", shape=tuple(expected.shape))
        if tensor is None:
            return report
        if not torch.isfinite(tensor).all():
            report.fail(f"{name}: got {_describe_rows(tensor)} with nan or inf; {case['hint']}")
            return report
        if scores.dtype == torch.float64 and getattr(result, "dtype", torch.float64) not in (torch.float64,
                                                                                              np.float64):
            report.fail(f"{name}: returned {result.dtype} for float64 scores: keep the input's dtype, or the "
                        "extra digits are lost")
            return report
        # Exact zeros first, at any dtype: a masked position or a row with nothing kept must get nothing, not a
        # clamp's 1e-5 that a float32 tolerance would let through.
        kept_nothing = ~mask.expand_as(scores).any(dim=dim)
        if kept_nothing.any() and torch.allclose(tensor.sum(dim=dim)[kept_nothing],
                                                 torch.ones(int(kept_nothing.sum()), dtype=torch.float64)):
            report.fail(f"{name}: a row with nothing kept sums to 1 ({_describe_rows(tensor)}): it must be all 0, "
                        "there is no position to give probability to")
            return report
        if (tensor.masked_select(~mask.expand_as(scores)).abs() > 1e-9).any():
            report.fail(f"{name}: masked positions got probability > 0: {_describe_rows(tensor)} (a clamp or an "
                        "epsilon? a masked position gets exactly 0)")
            return report
        diff = (tensor - expected).abs().max().item()
        # float32 carries about 7 digits: a right answer built another way (log_softmax then exp) may be off by
        # a few 1e-5 near -1000, where one float32 step is 6e-5; float64 carries 16.
        if diff < (1e-6 if scores.dtype == torch.float64 else 1e-4):
            report.ok(f"{name}: right")
            continue
        digits = 4 if diff >= 1e-4 else 8  # enough digits that "got" and "expected" differ where they do
        report.fail(f"{name}: off by up to {diff:.1e}: got {_describe_rows(tensor, digits)}, expected "
                    f"{_describe_rows(expected, digits)}; {case['hint']}")
        return report
    if not used_library:
        case = _masked_cases()[0]
        used_library.update(f"a library softmax (autograd recorded {step})" for step in
                            softmax_steps_in_graph(masked_softmax, case["scores"], case["mask"], case["dim"]))
    report.expect(not used_library, "built without a library softmax",
                  f"calls {', '.join(sorted(used_library))}: the exercise asks you to build it from exp and a shift "
                  "(stable_softmax from behind_pipeline.softmax is allowed)")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: expected calibration error with equal-width ("uniform") or equal-mass ("quantile") bins
# ---------------------------------------------------------------------------------------------------------------

STRATEGIES = ("uniform", "quantile")


def reference_bin_ids(confidences, n_bins: int, strategy: str) -> np.ndarray:
    """Bin of each confidence, by exactly the rule of ``sklearn.calibration.calibration_curve``."""
    values = np.asarray(confidences, dtype=np.float64)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:  # equal mass: the edges are the confidences' own quantiles (linear interpolation)
        edges = np.percentile(values, np.linspace(0, 1, n_bins + 1) * 100)
    # side="left": a confidence equal to an edge joins the bin below it, (lower, upper].
    return np.searchsorted(edges[1:-1], values)


def reference_calibration_error(confidences, correct, n_bins: int = 10, strategy: str = "uniform") -> float:
    """sum over non-empty bins of (n_b / N) * |accuracy_b - mean confidence_b|."""
    values = np.asarray(confidences, dtype=np.float64)
    gaps = np.bincount(reference_bin_ids(values, n_bins, strategy),
                       weights=np.asarray(correct, dtype=np.float64) - values, minlength=n_bins)
    return float(np.abs(gaps).sum() / len(values))


def _wrong_variants(confidences: np.ndarray, correct: np.ndarray, n_bins: int, strategy: str) -> dict[str, float]:
    """What the typical mistakes return on one case, to name the mistake when a result matches one of them."""
    total = len(confidences)

    def ece(bin_ids, keep=None, weight=None):
        """The ECE of the given bins over the predictions in ``keep`` (all by default), divided by all N."""
        keep = np.ones(total, dtype=bool) if keep is None else keep
        gaps = [(np.sum(keep & (bin_ids == b)), correct[keep & (bin_ids == b)].mean()
                 - confidences[keep & (bin_ids == b)].mean()) for b in np.unique(bin_ids[keep])]
        return float(sum((weight if weight is not None else count / total) * abs(gap) for count, gap in gaps))

    variants = {}
    bins = reference_bin_ids(confidences, n_bins, strategy)
    if strategy == "uniform":
        floor = np.floor(confidences * n_bins).astype(int)
        variants["a confidence of exactly 1.0 was dropped: it belongs to the last bin"] = \
            ece(floor, keep=floor < n_bins)
        variants["an edge value joined the bin above it: bins are (lower, upper], so b/n belongs to bin b - 1"] = \
            ece(np.minimum(floor, n_bins - 1))
    else:
        by_rank = np.empty(len(confidences), dtype=int)
        for b, chunk in enumerate(np.array_split(np.argsort(confidences, kind="stable"), n_bins)):
            by_rank[chunk] = b
        variants["bins cut by rank (array_split of the sorted order): cut at the quantile edges, so equal "
                 "confidences share a bin"] = ece(by_rank)
        variants["each bin weighted 1 / n_bins: weight it by its real share of predictions, n_b / N"] = \
            ece(bins, weight=1 / n_bins)
        edges = np.percentile(confidences, np.linspace(0, 1, n_bins + 1) * 100)
        variants["a confidence equal to an edge joined the bin above it: use searchsorted(..., side='left')"] = \
            ece(np.searchsorted(edges[1:-1], confidences, side="right"))
    variants["the plain mean of the bins' gaps: weight each gap by the bin's share of predictions (n_b / N)"] = \
        float(np.mean([abs(correct[bins == b].mean() - confidences[bins == b].mean()) for b in np.unique(bins)]))
    variants["|accuracy - confidence| over all predictions: take the absolute gap of each bin, then sum"] = \
        float(abs(correct.mean() - confidences.mean()))
    return variants


def _calibration_cases() -> list[dict]:
    generator = np.random.default_rng(4)
    confidences = 0.5 + 0.5 * generator.random(200)
    # Under-confident below 0.75, over-confident above: gaps of both signs, so they must not cancel out.
    correct = (generator.random(200) < np.where(confidences < 0.75, confidences + 0.2, confidences - 0.2)).astype(float)
    # 1.0 exactly (wrong, so dropping it changes the ECE) and values on the edges of 4 bins (0.5, 0.75).
    edges = np.array([1.0, 1.0, 0.75, 0.75, 0.75, 0.5, 0.6, 0.8, 0.9, 0.55])
    edges_correct = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    # 9 predictions and 4 quantile bins: the edges fall exactly on the 3rd, 5th and 7th confidence.
    nine = np.array([0.52, 0.58, 0.61, 0.67, 0.7, 0.79, 0.83, 0.9, 0.97])
    nine_correct = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    # Ties: seven predictions share 0.7, so two quantile edges coincide and a bin is empty.
    ties = np.array([0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.8, 0.8, 0.9, 0.9, 0.95])
    ties_correct = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    return [
        dict(name="200 predictions, 10 equal-width bins", data=(confidences, correct), n_bins=10, strategy="uniform"),
        dict(name="200 predictions, 7 equal-width bins", data=(confidences, correct), n_bins=7, strategy="uniform"),
        dict(name="confidences of exactly 1.0, 0.75 and 0.5, 4 equal-width bins", data=(edges, edges_correct),
             n_bins=4, strategy="uniform"),
        dict(name="1 equal-width bin", data=(confidences, correct), n_bins=1, strategy="uniform"),
        dict(name="200 predictions, 10 equal-mass bins", data=(confidences, correct), n_bins=10, strategy="quantile"),
        dict(name="9 predictions, 4 equal-mass bins (edges on data points)", data=(nine, nine_correct), n_bins=4,
             strategy="quantile"),
        dict(name="tied confidences, 3 equal-mass bins", data=(ties, ties_correct), n_bins=3, strategy="quantile"),
        dict(name="1 equal-mass bin", data=(confidences, correct), n_bins=1, strategy="quantile"),
        dict(name="confidences of exactly 1.0, 0.75 and 0.5, 4 equal-mass bins", data=(edges, edges_correct),
             n_bins=4, strategy="quantile"),
    ]


def check_calibration_error(calibration_error) -> CheckReport:
    """``calibration_error(confidences, correct, n_bins, strategy)``: the ECE with uniform or quantile bins."""
    report = CheckReport("Calibration error with two binnings")
    if not report.answered(calibration_error, "calibration_error"):
        return report
    for case in _calibration_cases():
        confidences, correct = case["data"]
        n_bins, strategy, name = case["n_bins"], case["strategy"], case["name"]
        # float32 for one case: a learner's code must not depend on the dtype it is handed.
        dtype = torch.float32 if n_bins == 7 else torch.float64
        args = (torch.tensor(confidences, dtype=dtype), torch.tensor(correct, dtype=dtype))
        given = tuple(tensor.clone() for tensor in args)  # graded on these, whatever the function does to args
        result = report.call(calibration_error, *args, n_bins, strategy, name="calibration_error")
        if result is Ellipsis:
            return report
        if not all(torch.equal(arg, before) for arg, before in zip(args, given, strict=True)):
            report.fail(f"{name}: your function changed the confidences or the labels it was given (an in-place "
                        "sort, `clamp_` or `[:] =`?): work on a copy instead")
            return report
        value = report.tensor(result, f"{name}: calibration_error(...)", shape=())
        if value is None:
            if report.lines and "shape" in report.lines[-1]:
                report.fail("return one number (a float or a 0-d tensor): the sum over the bins")
            return report
        data32 = given[0].double().numpy()  # the float32 case is graded on the confidences it was given
        expected = reference_calibration_error(data32, correct, n_bins, strategy)
        got = value.item()
        if abs(got - expected) < 1e-6:
            report.ok(f"{name}: {expected:.4f}")
            continue
        hints = named_mistakes(got, _wrong_variants(data32, np.asarray(correct), n_bins, strategy),
                               lambda answer, wrong: abs(answer - wrong) < 1e-6)
        if not hints and strategy == "quantile" and abs(got - reference_calibration_error(data32, correct, n_bins,
                                                                                         "uniform")) < 1e-6:
            hints = ["that is the equal-width result: with strategy='quantile' the edges are quantiles of the "
                     "confidences"]
        report.fail(f"{name}: got {got:.4f}, expected {expected:.4f}" + (f": {hints[0]}" if hints else ""))
        return report
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: fold a temperature into the classifier's last layer
# ---------------------------------------------------------------------------------------------------------------

REVIEWS = [
    "Two hours of my life I will never get back.",
    "A gorgeous, moving film with a script that keeps surprising you.",
    "The cast is wonderful, but the plot falls apart in the last act.",
    "Dull.",
]


@functools.lru_cache(maxsize=1)
def _course_classifier():
    from transformers import AutoModelForSequenceClassification

    from behind_pipeline.models import classifier_id

    return AutoModelForSequenceClassification.from_pretrained(classifier_id()).eval()


@functools.lru_cache(maxsize=1)
def _tiny_distilbert():
    """A 3-label DistilBERT with random weights and large output biases: another architecture, another label count.

    Its biases are far from 0, so folding T into the weight alone (and forgetting the bias) is visible.
    """
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=3,
                              id2label={0: "sad", 1: "neutral", 2: "happy"},
                              label2id={"sad": 0, "neutral": 1, "happy": 2})
    model = DistilBertForSequenceClassification(config).eval()
    torch.random.set_rng_state(generator_state)  # building it must not change the learner's random numbers
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([2.0, -3.0, 1.0]))
        model.classifier.weight.mul_(20)  # logits that span several units, not a few hundredths
    input_ids = torch.tensor([[1, 5, 9, 13, 2, 0], [1, 40, 2, 0, 0, 0], [1, 7, 7, 30, 22, 2]])
    attention_mask = (input_ids != 0).long()
    return model, {"input_ids": input_ids, "attention_mask": attention_mask}


def _tiny_logits(model, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits.double()


def _same_weights(model, reference) -> bool:
    state, expected = model.state_dict(), reference.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)


def _config_fields(model) -> dict:
    """The config as it shapes predictions: without the fields ``save_pretrained`` fills in (the class name, the
    dtype, the library version), which a right answer that saves and reloads the classifier changes."""
    fields = model.config.to_dict()
    for bookkeeping in ("architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path"):
        fields.pop(bookkeeping, None)
    return fields


def _weights_alone(folded, reference, built: dict):
    """A model of the reference's class holding only ``folded``'s weights, or None when they do not load into one.

    ``built`` keeps one such model per reference, so each case loads into it instead of building another: every
    weight is overwritten by a strict load.
    """
    try:
        if id(reference) not in built:
            with torch.random.fork_rng():  # building a model draws random weights: leave the learner's generator be
                built[id(reference)] = type(reference)(copy.deepcopy(reference.config)).eval()
        fresh = built[id(reference)]
        fresh.load_state_dict(folded.state_dict())
        return fresh
    except Exception:  # noqa: BLE001 - any answer whose weights do not load is told so
        return None


def _fold_once(report: CheckReport, fold_temperature, reference, logits_of, temperature: float, where: str):
    """Call the learner on a copy of ``reference``; return (folded model, its logits) or None after a FIX line."""
    given = copy.deepcopy(reference)  # the learner may break what it is given; the cached model stays intact
    folded = report.call(fold_temperature, given, temperature, name="fold_temperature")
    if folded is Ellipsis:
        if len(report.lines) > 1:  # it worked before: say what was different this time
            report.fail(f"that call was on the {where} ({type(reference).__name__}), T={temperature}: find the "
                        "output layer with head_layout(classifier) so any architecture works")
        return None
    if not _same_weights(given, reference):
        report.fail(f"{where}, T={temperature}: the classifier you were given changed: copy it first "
                    "(copy.deepcopy) and change the copy, or every later call would fold T again")
        return None
    if _config_fields(given) != _config_fields(reference):
        report.fail(f"{where}, T={temperature}: the config of the classifier you were given changed: leave the "
                    "original as it was and change only the copy")
        return None
    if folded is given:
        report.fail(f"{where}, T={temperature}: returned the classifier it was given: return a new one")
        return None
    if getattr(folded, "training", False):
        report.fail(f"{where}, T={temperature}: your classifier is in training mode, so dropout changes its "
                    "scores from call to call: call .eval() on it (a model built anew starts in training mode)")
        return None
    try:
        names = set(folded.state_dict())
    except Exception:  # noqa: BLE001 - not a module: the forward pass below says what is wrong
        names = None
    if names is not None and names != set(reference.state_dict()):
        report.fail(f"{where}, T={temperature}: your classifier's weights are not the original's names "
                    "(a new module wrapped around a layer?): save_pretrained and from_pretrained would lose the "
                    "temperature. Divide the output layer's own weight and bias by T")
        return None
    logits = report.call(logits_of, folded, name="your classifier's forward pass")
    if logits is Ellipsis:
        return None
    return folded, logits


def _name_logit_mistake(logits: torch.Tensor, original: torch.Tensor, temperature: float) -> str:
    if torch.allclose(logits, original * temperature, atol=1e-4):
        return ": the logits were multiplied by T; divide the output layer's weight and bias by T"
    if torch.allclose(logits, original, atol=1e-6):
        return ": the logits did not change; divide the output layer's `weight` and `bias` (in place on the copy)"
    return (": divide both the weight and the bias of the output layer (the last Linear), not an earlier layer: "
            "the activation in between is not linear")


def check_fold_temperature(fold_temperature) -> CheckReport:
    """``fold_temperature(classifier, temperature)``: a new classifier whose logits are the old ones divided by T."""
    from transformers import pipeline

    from behind_pipeline.predict import predict_logits

    report = CheckReport("Temperature folded into the weights")
    if not report.answered(fold_temperature, "fold_temperature"):
        return report
    tokenizer, classifier = course_tokenizer(), _course_classifier()
    built = {}  # one model per architecture, reloaded with each answer's weights
    tiny, tiny_inputs = _tiny_distilbert()

    def course_logits(model):  # the book's one prediction path
        return predict_logits(model, tokenizer, REVIEWS).double()

    def distilbert_logits(model):
        return _tiny_logits(model, tiny_inputs)

    original, tiny_original = course_logits(classifier), distilbert_logits(tiny)
    cases = [(classifier, course_logits, original, 2.0, "course classifier"),
             (classifier, course_logits, original, 0.5, "course classifier"),
             (classifier, course_logits, original, 1.0, "course classifier"),
             (tiny, distilbert_logits, tiny_original, 3.0, "3-label DistilBERT")]
    for model, logits_of, logits_before, temperature, where in cases:
        outcome = _fold_once(report, fold_temperature, model, logits_of, temperature, where)
        if outcome is None:
            return report
        folded, logits = outcome
        logits = report.tensor(logits, f"{where} logits", shape=tuple(logits_before.shape))
        if logits is None:
            return report
        expected = logits_before / temperature
        diff = (logits - expected).abs().max().item()
        if not diff < 1e-4:  # also a nan diff: logits with inf or nan (a division by int(0.5) = 0?) are wrong
            report.fail(f"{where}, T={temperature}: logits off by up to {diff:.1e}"
                        + _name_logit_mistake(logits, logits_before, temperature))
            return report
        fresh = _weights_alone(folded, model, built)
        reloaded = None if fresh is None else report.call(logits_of, fresh, name="a model with your weights")
        if reloaded is Ellipsis:
            return report
        if reloaded is None or not (reloaded - expected).abs().max().item() < 1e-4:
            report.fail(f"{where}, T={temperature}: the temperature is not in the weights: a fresh model loaded "
                        "with your classifier's weights does not give logits / T (a hook or a new forward?), so "
                        "save_pretrained and from_pretrained would lose it. Divide the output layer's own weight "
                        "and bias by T")
            return report
        report.ok(f"{where}, T={temperature}: logits equal the original logits / {temperature} "
                  f"(max abs diff {diff:.1e}), the original classifier unchanged")
        if model is classifier and temperature == 2.0:
            # The point of folding: the unchanged pipeline now returns the calibrated scores.
            clf = report.call(pipeline, "text-classification", model=folded, tokenizer=tokenizer, top_k=None,
                              name="pipeline(model=your classifier)")
            answers = report.call(clf, list(REVIEWS), name="your pipeline") if clf is not Ellipsis else Ellipsis
            if answers is Ellipsis:
                return report
            label2id = {name: i for i, name in classifier.config.id2label.items()}
            try:  # one {label: score} list per review, every label present (top_k=None)
                scores = torch.tensor([[next(a["score"] for a in answer if label2id.get(a["label"]) == i)
                                        for i in range(len(label2id))] for answer in answers], dtype=torch.float64)
            except (StopIteration, TypeError, KeyError) as error:
                report.fail(f"the pipeline's answers could not be read as scores per label ({error!r}): keep the "
                            "classifier's config (id2label) when you copy it")
                return report
            expected_probs = torch.softmax(original / temperature, dim=-1)
            score_diff = (scores - expected_probs).abs().max().item()
            if not report.expect(score_diff < 1e-5, f"pipeline() on the folded classifier returns softmax(logits / "
                                 f"{temperature}) (max abs diff {score_diff:.1e})",
                                 f"pipeline() scores differ from softmax(logits / {temperature}) by {score_diff:.1e}"):
                return report
    return report
