"""Checkers for the exercises of chapter 17 (ONNX): a sentence-embedding graph, cold start against warm latency,
and a prediction path without PyTorch.

The export checker runs the learner's graph with ONNX Runtime on small random BERTs of two sizes (another width,
head count and pad id than the chapter's model), at several batch sizes and lengths, with padded rows, and compares
with mean pooling computed in PyTorch. The latency checker gives the learner a fake session and a fake clock, so
every expected figure is exact and the check is the same on any machine. The last checker runs the course
classifier's ONNX file on reviews of many lengths, one far past the model's 512 positions, then behind two other
faces: a graph that also declares token_type_ids, and one whose logits are a thousand times larger (a softmax that
does not subtract each row's maximum overflows).
"""

import copy
import functools
import json
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from behind_pipeline.checks._core import CheckReport, describe_error, named_mistakes


def first_line(error: Exception) -> str:
    """The first line of an error's message (ONNX Runtime's run over several lines), or "" when it has none."""
    lines = str(error).splitlines()
    return lines[0] if lines else ""


# --- Exercise 1: a sentence-embedding graph ------------------------------------------------------------------------

# (hidden, heads, layers, vocab, pad id, what the case exposes)
EMBEDDER_CASES = [
    (32, 4, 2, 120, 0, "a small BERT, pad id 0"),
    (24, 3, 1, 90, 5, "another width and head count, pad id 5"),
]
# (batch, sequence) shapes fed to each graph: one text, a few, more than the export example; short and long.
FEED_SHAPES = [(3, 9), (1, 5), (6, 4), (2, 13)]


def tiny_encoder(hidden: int, heads: int, layers: int, vocab: int, pad_id: int, seed: int = 0):
    """A random BERT body (``BertModel``) in eval mode: the checker's stand-in for all-MiniLM-L6-v2."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=64, pad_token_id=pad_id)
    return BertModel(config).eval()


def padded_feed(shape: tuple[int, int], vocab: int, pad_id: int, seed: int) -> dict[str, np.ndarray]:
    """Random token ids with rows of different real lengths; padded positions hold ``pad_id`` and mask 0."""
    batch, sequence = shape
    generator = np.random.default_rng(seed)
    ids = generator.integers(pad_id + 1, vocab, size=(batch, sequence), dtype=np.int64)
    lengths = [sequence] + [int(generator.integers(1, sequence + 1)) for _ in range(batch - 1)]
    mask = np.zeros((batch, sequence), dtype=np.int64)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = pad_id
    return {"input_ids": ids, "attention_mask": mask}


def pooled(encoder, feed: dict, pool: str = "mean", mask_in_encoder: bool = True) -> np.ndarray:
    """What a graph should return (``pool="mean"``, mask everywhere) and what typical mistakes return."""
    ids, mask = torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])
    with torch.no_grad():
        hidden = encoder(input_ids=ids, attention_mask=mask if mask_in_encoder else None).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    if pool == "cls":
        return hidden[:, 0].numpy()
    if pool == "unmasked_mean":
        return hidden.mean(dim=1).numpy()
    if pool == "sum":
        return (hidden * weights).sum(dim=1).numpy()
    if pool == "over_length":  # padded positions zeroed, but divided by the padded length
        return ((hidden * weights).sum(dim=1) / hidden.shape[1]).numpy()
    if pool == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values.numpy()
    if pool == "unmasked_max":
        return hidden.max(dim=1).values.numpy()
    if pool == "normalized":  # what sentence-transformers' Normalize module adds after the pooling
        mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2, dim=-1).numpy()
    return ((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)).numpy()  # (batch, hidden)


def _embedder_mistakes(encoder, feed) -> dict[str, np.ndarray]:
    return {
        "the pooling ignores the mask: padded positions are averaged in too (multiply by the mask, divide by its "
        "sum)": pooled(encoder, feed, "unmasked_mean"),
        "this is the first token's vector ([CLS]); the exercise asks for the mean over the real tokens":
            pooled(encoder, feed, "cls"),
        "this is the sum over real tokens; divide by their count (the mask's sum)": pooled(encoder, feed, "sum"),
        "the mask reaches the pooling but not the encoder: pass attention_mask to the encoder too, or padding "
        "changes the real tokens' vectors": pooled(encoder, feed, "mean", mask_in_encoder=False),
        "the masked sum is divided by the padded length (hidden.shape[1]): divide each row by its own count of "
        "real tokens (the mask's sum over the sequence)": pooled(encoder, feed, "over_length"),
        "these are the mean vectors divided by their L2 norm (normalized, as sentence-transformers' Normalize "
        "module does): the exercise asks for the mean itself": pooled(encoder, feed, "normalized"),
        "this is the maximum over the real tokens (max pooling); the exercise asks for their mean":
            pooled(encoder, feed, "max"),
        "this is the maximum over all positions (max pooling, padding included); the exercise asks for the mean "
        "over the real tokens": pooled(encoder, feed, "unmasked_max"),
    }


def _dropouts_in_training_mode(model) -> int:
    """How many Dropout nodes of an ONNX graph have training_mode set to a constant True (dropout on)."""
    import onnx

    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        for attribute in node.attribute if node.op_type == "Constant" else ():
            if attribute.name == "value":
                constants[node.output[0]] = attribute.t
    count = 0
    for node in model.graph.node:
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2] in constants:
            count += bool(np.asarray(onnx.numpy_helper.to_array(constants[node.input[2]])).any())
    return count


def _static_axes(path: Path) -> list[str]:
    from behind_pipeline.onnx_export import graph_axes

    found = []
    for name, axes in graph_axes(path).items():
        if name not in ("input_ids", "attention_mask"):
            continue
        for axis, what in ((0, "batch"), (1, "sequence")):
            if len(axes) > axis and isinstance(axes[axis], int) and axes[axis] > 0:
                found.append(f"the {what} axis of {name} is fixed at {axes[axis]}")
    return found


def check_export_embedder(export_embedder) -> CheckReport:
    """``export_embedder(encoder, path)`` writes a graph: (input_ids, attention_mask) -> mean-pooled embeddings."""
    import onnx

    from behind_pipeline.onnx_export import ort_session

    report = CheckReport("A sentence-embedding graph")
    for seed, (hidden, heads, layers, vocab, pad_id, description) in enumerate(EMBEDDER_CASES):
        encoder = tiny_encoder(hidden, heads, layers, vocab, pad_id, seed)
        reference = copy.deepcopy(encoder)  # the expected values do not depend on what the learner's code does to it
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "embedder.onnx"
            if not report.answered(export_embedder, "export_embedder"):
                return report
            try:  # what it returns does not matter: the file does
                export_embedder(encoder, path)
            except Exception as error:  # a learner's bug must become a message, not a crashed notebook
                report.fail(f"export_embedder(...) raised {describe_error(error)}")
                return report
            if not path.exists():
                report.fail(f"{description}: nothing was written at the path given to export_embedder (still "
                            "`...`? export to `path`)")
                return report
            try:
                graph = onnx.load(str(path))
                onnx.checker.check_model(graph)
                session = ort_session(path)
            except Exception as error:  # a malformed file must become a message
                report.fail(f"{description}: the file is not a valid ONNX graph ({type(error).__name__}: {error})")
                return report
            names = [node.name for node in session.get_inputs()]
            if "attention_mask" not in names and len(names) >= 2 and any(
                    name not in ("input_ids", "token_type_ids") for name in names):
                report.fail(f"{description}: the graph's inputs are {names}: name them input_ids and attention_mask "
                            "(input_names=['input_ids', 'attention_mask']), the keys a tokenizer's output has")
                return report
            if "attention_mask" not in names:
                report.fail(f"{description}: the graph's inputs are {names}, without attention_mask: padding would "
                            "count as text. Export with input_ids and attention_mask")
                return report
            unknown = [name for name in names if name not in ("input_ids", "attention_mask", "token_type_ids")]
            if unknown:
                report.fail(f"{description}: unexpected graph inputs {unknown}; expected input_ids and "
                            "attention_mask")
                return report
            typed = [f"{node.name} takes {node.type}" for node in session.get_inputs()
                     if node.type != "tensor(int64)"]
            if typed:
                report.fail(f"{description}: {'; '.join(typed)}: the inputs should be int64, what a tokenizer gives; "
                            "export with int64 example inputs (torch.randint and torch.ones_like(input_ids) give "
                            "int64 unless told otherwise)")
                return report
            static = _static_axes(path)
            if static:
                report.fail(f"{description}: {'; '.join(static)}: declare the batch and sequence axes dynamic "
                            "(dynamic_shapes with torch.export.Dim)")
                return report
            dropouts = _dropouts_in_training_mode(graph)
            if dropouts:
                report.fail(f"{description}: {dropouts} Dropout node(s) of the graph are in training mode (dropout "
                            "on): the encoder was exported in training mode; call .eval() on the module before "
                            "exporting (ONNX Runtime's optimizer happens to remove them, other runtimes apply them)")
                return report
            for index, shape in enumerate(FEED_SHAPES):
                feed = padded_feed(shape, vocab, pad_id, seed=10 * seed + index)
                inputs = dict(feed)
                if "token_type_ids" in names:
                    inputs["token_type_ids"] = np.zeros_like(feed["input_ids"])
                try:
                    outputs = session.run(None, {name: inputs[name] for name in names})
                except Exception as error:
                    report.fail(f"{description}: a batch of shape {shape} failed in ONNX Runtime "
                                f"({type(error).__name__}: {first_line(error)})")
                    return report
                got = np.asarray(outputs[0])
                if got.shape != (shape[0], hidden):
                    extra = " (one vector per token: pool over the sequence axis)" if got.ndim == 3 else ""
                    report.fail(f"{description}: the first output has shape {got.shape}, expected "
                                f"{(shape[0], hidden)} (batch, hidden){extra}")
                    return report
                expected = pooled(reference, feed)
                if np.allclose(got, expected, atol=1e-4):
                    continue
                named = named_mistakes(got, _embedder_mistakes(reference, feed),
                                       lambda embeddings, wrong: np.allclose(embeddings, wrong, atol=1e-4), expected)
                if named:
                    report.fail(f"{description}: {named[0]}")
                    return report
                diff = float(np.abs(got - expected).max())
                report.fail(f"{description}, batch {shape}: the embeddings differ from the masked mean of the "
                            f"encoder's last hidden states by up to {diff:.2e}")
                return report
        report.ok(f"{description} (hidden {hidden}, {heads} heads): valid graph, input_ids and attention_mask with "
                  f"dynamic axes, masked mean pooling equal to PyTorch at {len(FEED_SHAPES)} batch shapes")
    return report


# --- Exercise 2: cold start against warm latency -------------------------------------------------------------------


class FakeClock:
    """A clock that moves only when the fake session works: every figure the checker expects is exact."""

    def __init__(self):
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class FakeSession:
    """Stands for an ``InferenceSession``: ``run(None, feed)`` costs a scripted number of fake milliseconds."""

    def __init__(self, clock: FakeClock, costs_ms: list[float], feed):
        self.clock, self.costs_ms, self.feed = clock, costs_ms, feed
        self.calls = 0
        self.wrong_feed = False

    def run(self, output_names, input_feed, run_options=None):  # InferenceSession.run's signature
        if not same_feed(input_feed, self.feed):
            self.wrong_feed = True
        cost = self.costs_ms[min(self.calls, len(self.costs_ms) - 1)]
        self.calls += 1
        self.clock.now += cost / 1000
        return [np.zeros((1, 2), dtype=np.float32)]


def same_feed(got, feed: dict) -> bool:
    """Whether ``got`` holds the same arrays under the same names as ``feed`` (a copy, or int64 arrays made from
    it, is the same feed). Never raises."""
    try:
        return (isinstance(got, dict) and sorted(got) == sorted(feed)
                and all(np.array_equal(np.asarray(got[name]), feed[name]) for name in feed))
    except Exception:
        return False


def run_costs_ms(warmup: int, repeats: int) -> list[float]:
    """The fake run times: a slow first call, warm-up calls slower than the steady state, then a steady state
    with a spike every 13 calls (so the mean differs from the median, and the middle half from the whole range and
    from the mean give or take a standard deviation). The first call's 45.25 ms, like the loads' fractions of a
    millisecond, tells a time rounded to whole milliseconds from the right one."""
    warming = [30.0 - 4.0 * i for i in range(warmup)]
    steady = [3.0 + 0.5 * ((7 * j) % 5) + (15.0 if j % 13 == 12 else 0.0) for j in range(repeats + 20)]
    return [45.25] + warming + steady


# (load ms, warmup, repeats, what the case exposes)
COLD_CASES = [
    (300.4, 3, 40, "3 warm-up calls, 40 timed"),
    (120.4, 5, 21, "5 warm-up calls, 21 timed"),
    (80.4, 0, 10, "no warm-up asked for (the boundary): 10 timed"),
]
COLD_KEYS = ("load_ms", "first_ms", "median_ms", "middle_half_ms")
MIDDLE_HALF = (25, 75)  # percentiles: the chapter's middle half (``measure.spread_ms``)


def middle_half(values) -> tuple[float, float]:
    """(25th, 75th percentile) of ``values``, as ``np.percentile`` computes them (linear), like ``spread_ms``."""
    low, high = np.percentile(np.asarray(values, dtype=np.float64), MIDDLE_HALF)
    return float(low), float(high)


def _cold_expected(load_ms, warmup, repeats) -> dict:
    costs = run_costs_ms(warmup, repeats)
    timed = np.asarray(costs[1 + warmup:1 + warmup + repeats])
    return {"load_ms": load_ms, "first_ms": costs[0], "median_ms": float(np.median(timed)),
            "middle_half_ms": middle_half(timed), "timed": timed}


def _percentile_accepted(value: float, timed: np.ndarray, percent: float) -> bool:
    """Any estimate between the two order statistics around rank percent / 100 * (n - 1): np.percentile's linear
    one, and its nearest, lower, higher and midpoint methods."""
    ordered = np.sort(timed)
    position = percent / 100 * (len(ordered) - 1)
    low, high = ordered[int(np.floor(position))], ordered[int(np.ceil(position))]
    return low - _tolerance(low) <= value <= high + _tolerance(high)


def _tolerance(expected: float) -> float:
    """1e-6 of the figure (at least 1e-6 ms): a float32 result (``torch.tensor(samples)``, ``np.float32``) keeps
    about 7 digits, so 300.4 ms comes back as 300.39999; a rounded or scaled figure is off by far more."""
    return 1e-6 * max(1.0, abs(float(expected)))


def _accepted(key: str, value, expected: dict) -> bool:
    if key == "middle_half_ms":
        return all(_percentile_accepted(end, expected["timed"], percent)
                   for end, percent in zip(value, MIDDLE_HALF, strict=True))
    return abs(value - expected[key]) <= _tolerance(expected[key])


def _same(value, wrong) -> bool:
    return bool(np.allclose(np.asarray(value, dtype=np.float64), np.asarray(wrong, dtype=np.float64), rtol=1e-6,
                            atol=1e-6))


def _cold_mistakes(load_ms, warmup, repeats) -> dict[str, dict]:
    costs = np.asarray(run_costs_ms(warmup, repeats))
    timed = costs[1 + warmup:1 + warmup + repeats]
    all_after_first = costs[1:1 + warmup + repeats]
    with_first = np.concatenate([costs[:1], timed])
    low, high = middle_half(timed)
    timed_before_warmup = costs[1:1 + repeats]
    quarter, three_quarters = len(timed) // 4, 3 * len(timed) // 4
    return {
        "the warm-up calls are timed too: they are there to be left out of the figures (a latency measured "
        "without warm-up)": {"median_ms": np.median(all_after_first), "middle_half_ms": middle_half(all_after_first)},
        "the first (cold) call is counted among the warm ones: it belongs in first_ms only":
            {"median_ms": np.median(with_first), "middle_half_ms": middle_half(with_first)},
        "median_ms is the mean: a few slow calls pull the mean up, the median is the middle value":
            {"median_ms": timed.mean()},
        "middle_half_ms is the fastest and the slowest call, the whole range: the middle half leaves out the fastest "
        "quarter of the calls and the slowest quarter (the 25th and 75th percentiles)":
            {"middle_half_ms": (timed.min(), timed.max())},
        "middle_half_ms is the mean minus and plus one standard deviation: a few slow calls stretch that far past "
        "the typical ones; the middle half is the 25th and the 75th percentile":
            {"middle_half_ms": (timed.mean() - timed.std(), timed.mean() + timed.std())},
        "middle_half_ms is the mean minus and plus one standard deviation (ddof=1): a few slow calls stretch that "
        "far past the typical ones; the middle half is the 25th and the 75th percentile":
            {"middle_half_ms": (timed.mean() - timed.std(ddof=1), timed.mean() + timed.std(ddof=1))},
        "middle_half_ms is (75th, 25th percentile): give the lower end first, (25th, 75th)":
            {"middle_half_ms": (high, low)},
        "the warm-up calls come after the timed ones: run the warm-up calls first, then time the others":
            {"median_ms": np.median(timed_before_warmup), "middle_half_ms": middle_half(timed_before_warmup)},
        "middle_half_ms holds the timings at positions n/4 and 3n/4 of the unsorted list: sort them first, or use "
        "np.percentile(..., [25, 75]), which sorts for you":
            {"middle_half_ms": (timed[quarter], timed[three_quarters])},
        "middle_half_ms is the 10th and the 90th percentile, the middle 80%: the middle half is the 25th and the "
        "75th percentile": {"middle_half_ms": tuple(np.percentile(timed, [10, 90]))},
        "middle_half_ms is the 5th and the 95th percentile, the middle 90%: the middle half is the 25th and the "
        "75th percentile": {"middle_half_ms": tuple(np.percentile(timed, [5, 95]))},
        "middle_half_ms is the median and the 95th percentile: the middle half is the 25th and the 75th "
        "percentile": {"middle_half_ms": (np.median(timed), np.percentile(timed, 95))},
        "first_ms includes the warm-up calls: read the clock right after the first run, before the warm-up":
            {"first_ms": costs[:1 + warmup].sum()},
        "the times are in microseconds (seconds * 1e6); the keys ask for milliseconds (seconds * 1000)":
            {"load_ms": load_ms * 1000, "first_ms": costs[0] * 1000},
        "load_ms includes the first run: time make_session() alone": {"load_ms": load_ms + costs[0]},
        "first_ms includes the load: read the clock again after make_session() returns, just before the first "
        "run": {"first_ms": load_ms + costs[0]},
        "load_ms is in seconds; the keys ask for milliseconds": {"load_ms": load_ms / 1000},
        "first_ms is in seconds; the keys ask for milliseconds": {"first_ms": costs[0] / 1000},
        "median_ms is in seconds; the keys ask for milliseconds": {"median_ms": np.median(timed) / 1000},
        "middle_half_ms is in seconds; the keys ask for milliseconds": {"middle_half_ms": (low / 1000, high / 1000)},
        "the times are rounded to whole milliseconds: keep the fractions (a warm call of a small model takes a "
        "few milliseconds, or less than one)": {"load_ms": np.floor(load_ms), "first_ms": np.floor(costs[0])},
        "each timed call is measured from the start of the loop, so the samples add up: read the clock again "
        "before each call": {"median_ms": np.median(np.cumsum(timed)), "middle_half_ms": middle_half(np.cumsum(timed))},
        "middle_half_ms is np.percentile(..., [0.25, 0.75]), near the fastest call: np.percentile takes percents "
        "([25, 75]); np.quantile takes [0.25, 0.75]": {"middle_half_ms": tuple(np.percentile(timed, [0.25, 0.75]))},
        "middle_half_ms is statistics.quantiles' default ('exclusive') estimate, which lands outside the order "
        "statistics np.percentile(..., [25, 75]) lies between, the one asked for (statistics.quantiles(..., "
        "method='inclusive') is the same)": {"middle_half_ms": _exclusive_quartiles(timed)},
    }


def _exclusive_quartiles(timed: np.ndarray) -> tuple[float, float]:
    quartiles = statistics.quantiles(timed.tolist(), n=4)  # 'exclusive' by default
    return quartiles[0], quartiles[2]


def _middle_half_pair(report: CheckReport, value, description: str, expected: dict) -> tuple[float, float] | None:
    """The learner's middle half as (low, high) in ms, or None and a FIX line that says what it looks like."""
    if isinstance(value, str):
        report.fail(f"{description}: middle_half_ms is text ({value[:40]!r}): spread_ms writes timings for printing; "
                    "return the two numbers, (25th percentile, 75th percentile) in ms")
        return None
    pair = report.tensor(value, "result['middle_half_ms']")
    if pair is None:
        return None
    if pair.numel() == 1:
        low, high = expected["middle_half_ms"]
        width = (": it equals the width of the middle half, 75th minus 25th percentile; give both ends"
                 if abs(pair.item() - (high - low)) < 1e-6 else "")
        report.fail(f"{description}: middle_half_ms is one number ({pair.item():.3f}); it is the pair (25th "
                    f"percentile, 75th percentile) of the timed calls{width}")
        return None
    if pair.numel() != 2:
        report.fail(f"{description}: middle_half_ms has {pair.numel()} numbers; it is the pair (25th percentile, "
                    "75th percentile) of the timed calls")
        return None
    return float(pair.flatten()[0]), float(pair.flatten()[1])


def check_cold_and_warm(cold_and_warm) -> CheckReport:
    """``cold_and_warm(make_session, feed, warmup, repeats, clock)`` -> load, first-call and warm latency in ms."""
    report = CheckReport("Cold start against warm latency")
    for load_ms, warmup, repeats, description in COLD_CASES:
        clock = FakeClock()
        feed = {"input_ids": np.ones((1, 4), dtype=np.int64), "attention_mask": np.ones((1, 4), dtype=np.int64)}
        sessions = []

        def make_session(clock=clock, feed=feed, sessions=sessions, load_ms=load_ms, warmup=warmup,
                         repeats=repeats):
            clock.now += load_ms / 1000
            sessions.append(FakeSession(clock, run_costs_ms(warmup, repeats), feed))
            return sessions[-1]

        result = report.call(cold_and_warm, make_session, feed, warmup=warmup, repeats=repeats, clock=clock,
                             name="cold_and_warm")
        if result is Ellipsis:
            return report
        if not isinstance(result, dict) or any(key not in result for key in COLD_KEYS):
            keys = sorted(result) if isinstance(result, dict) else type(result).__name__
            report.fail(f"cold_and_warm should return a dict with keys {list(COLD_KEYS)}, got {keys}")
            return report
        if len(sessions) != 1:
            report.fail(f"{description}: make_session was called {len(sessions)} times; call it once (that call "
                        "is the load)")
            return report
        session = sessions[0]
        if session.wrong_feed:
            report.fail(f"{description}: session.run got another feed than the one given: pass `feed` as it is")
            return report
        if warmup and session.calls == 1 + repeats:
            report.fail(f"{description}: session.run was called {session.calls} times, with no warm-up calls: "
                        f"after the cold call, run {warmup} untimed calls, then time {repeats} (a latency measured "
                        "without warm-up includes one-off costs)")
            return report
        if session.calls != 1 + warmup + repeats:
            report.fail(f"{description}: session.run was called {session.calls} times; expected 1 (cold) + "
                        f"{warmup} (warm-up) + {repeats} (timed) = {1 + warmup + repeats}")
            return report
        if clock.reads == 0:
            report.fail(f"{description}: the clock given was never read: time with clock() (the check passes a "
                        "fake clock that moves only when the session works; time.perf_counter() reads the real one)")
            return report
        expected = _cold_expected(load_ms, warmup, repeats)
        values = {}
        for key in COLD_KEYS[:-1]:
            value = report.tensor(result[key], f"result[{key!r}]", shape=())
            if value is None:
                return report
            values[key] = value.item()
        values["middle_half_ms"] = _middle_half_pair(report, result["middle_half_ms"], description, expected)
        if values["middle_half_ms"] is None:
            return report
        if all(_accepted(key, values[key], expected) for key in COLD_KEYS):
            low, high = expected["middle_half_ms"]
            report.ok(f"{description}: load {expected['load_ms']:.0f} ms, first call {expected['first_ms']:.0f} "
                      f"ms, warm median {expected['median_ms']:.2f} ms, middle half {low:.2f}-{high:.2f} ms")
            continue
        if clock.reads < repeats + 1:
            report.fail(f"{description}: the clock given was read {clock.reads} times, too few to time {repeats} "
                        "calls: time every call with clock() (the fake session moves only that clock; "
                        "time.perf_counter() reads the real one)")
            return report
        # Several mistakes may give the same numbers in one case (a tie among the fake timings): name them all.
        named = named_mistakes(values, _cold_mistakes(load_ms, warmup, repeats),
                               lambda figures, wrong, expected=expected: any(
                                   _same(figures[key], value) and not _accepted(key, value, expected)
                                   for key, value in wrong.items()))
        if named:
            report.fail(f"{description}: {'; or else, '.join(named)}")
            return report
        shown = ", ".join(f"{key} {np.round(values[key], 3)} (expected {np.round(expected[key], 3)})"
                          for key in COLD_KEYS)
        report.fail(f"{description}: {shown}")
        return report
    return report


# --- Exercise 3: predictions without PyTorch ----------------------------------------------------------------------


def long_review(texts) -> str:
    """A review far past 512 tokens: the model's positions end there, so the text must be truncated."""
    return " ".join([texts[0]] * 60)


def course_onnx_session():
    from behind_pipeline.onnx_export import classifier_onnx_file, ort_session

    return ort_session(classifier_onnx_file())


def _default_texts() -> list[str]:
    """36 test reviews, a one-word review and one far past 512 tokens: 38, so batches of 8 or 32 leave a partial
    one."""
    from behind_pipeline.data import load_rotten_tomatoes

    test_texts = list(load_rotten_tomatoes()["test"]["text"])
    return [*test_texts[:36], "Superb.", long_review(test_texts)]


def _reference_logits(session, tokenizer, texts) -> torch.Tensor:
    """The graph's logits on ``texts``, in float64 (texts, labels). Batches of 8, sorted by length: only the long
    review's batch is padded to 512 positions (one batch of 38 would pad all 38 there and take most of the time)."""
    from behind_pipeline.onnx_export import OnnxClassifier
    from behind_pipeline.predict import predict_logits

    return predict_logits(OnnxClassifier(session), tokenizer, texts, batch_size=8).double()


@functools.cache
def _course_reference(onnx_file: str) -> tuple[tuple[str, ...], torch.Tensor]:
    """The default texts and the course graph's logits on them, computed once per graph file (its folder is the
    weights' fingerprint): a learner who checks again, and the tests, do not pay for the reference again."""
    from transformers import AutoTokenizer

    from behind_pipeline.models import classifier_id
    from behind_pipeline.onnx_export import ort_session

    texts = _default_texts()
    tokenizer = AutoTokenizer.from_pretrained(classifier_id())
    return tuple(texts), _reference_logits(ort_session(onnx_file), tokenizer, texts)


# Logits this many times the course model's: a confident model's, whose np.exp overflows (float32 and float64)
# unless each row's maximum is subtracted first.
LARGE_LOGITS = 1000.0


class OtherGraphSession:
    """The course session behind another graph's face: it declares ``extra_inputs`` besides the course graph's two
    (``token_type_ids``, as many BERT exports do) and, like ONNX Runtime, refuses a feed without exactly the inputs
    it declares; its logits are ``scale`` times the course model's."""

    def __init__(self, session, extra_inputs: tuple[str, ...] = (), scale: float = 1.0):
        self.session, self.extra_inputs, self.scale = session, tuple(extra_inputs), scale
        self.inputs = [*session.get_inputs(), *(SimpleNamespace(name=name, type="tensor(int64)",
                                                                shape=["batch", "sequence"]) for name in extra_inputs)]
        self.fed = None  # the names of the first feed that did not match the declared inputs

    def get_inputs(self):
        return list(self.inputs)

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, output_names, input_feed, run_options=None):
        declared = [node.name for node in self.inputs]
        names = sorted(input_feed) if isinstance(input_feed, dict) else []
        if names != sorted(declared):
            self.fed = self.fed if self.fed is not None else names
            raise ValueError(f"Required inputs ({[n for n in declared if n not in names]}) are missing from input "
                             f"feed ({names})")
        for name in self.extra_inputs:
            if np.asarray(input_feed[name]).dtype != np.int64:
                raise ValueError(f"Unexpected input data type for {name}: expected int64")
        outputs = self.session.run(output_names, {name: input_feed[name] for name in declared
                                                  if name not in self.extra_inputs})
        return [outputs[0] * np.float32(self.scale), *outputs[1:]]


def _runs(function, *args, **kwargs) -> bool:
    """Whether the learner's function returns without raising: a probe that tells one cause of a failure from
    another."""
    try:
        function(*args, **kwargs)
        return True
    except Exception:
        return False


def check_predict_without_torch(predict_without_torch, session=None, tokenizer=None, texts=None) -> CheckReport:
    """``predict_without_torch(session, tokenizer_file, texts, id2label)`` -> (probs, labels) as ``pipeline`` gives."""
    from transformers import AutoTokenizer

    from behind_pipeline.models import classifier_id

    report = CheckReport("Predictions without PyTorch")
    course_case = session is None and tokenizer is None and texts is None
    session = session or course_onnx_session()
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(classifier_id())
    id2label = {0: "rotten", 1: "fresh"}
    if course_case:
        from behind_pipeline.onnx_export import classifier_onnx_file

        course_texts, course_logits = _course_reference(str(classifier_onnx_file()))
        texts, expected_logits = list(course_texts), course_logits.clone()  # (texts, labels)
    else:
        texts = _default_texts() if texts is None else texts
        expected_logits = _reference_logits(session, tokenizer, texts)  # (texts, labels)
    token_counts = [len(tokenizer(text, verbose=False)["input_ids"]) for text in texts]  # no too-long warning
    fitting = [text for text, count in zip(texts, token_counts, strict=True) if count <= 512]
    uneven_pair = [min(fitting, key=len), max(fitting, key=len)] if fitting else []  # two lengths: needs padding
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        tokenizer_file = Path(folder) / "tokenizer.json"
        # Many tokenizer.json files on the Hub neither pad nor truncate: the learner's code must set both.
        settings = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        settings["truncation"], settings["padding"] = None, None
        tokenizer_file.write_text(json.dumps(settings), encoding="utf-8")
        tokenizer_file = str(tokenizer_file)
        # Batches of 8 in the first case: 38 leave a partial batch, and only the last one (the long review's) is
        # padded to 512 positions, where batches of 32 would pad 32 reviews there and take most of the check's time.
        cases = [(session, 1.0, 8, list(range(len(texts))), "38 reviews, one past 512 tokens"),
                 (session, 1.0, 8, [5, 1, 37, 2, 36], "5 reviews out of order, batches of 8"),
                 (session, 1.0, 32, [3], "a single review"),
                 (OtherGraphSession(session, ("token_type_ids",)), 1.0, 2, [4, 36, 0],
                  "a graph that also declares token_type_ids, batches of 2"),
                 (OtherGraphSession(session, scale=LARGE_LOGITS), LARGE_LOGITS, 32, [0, 36, 1],
                  f"logits {LARGE_LOGITS:.0f} times the course model's (a confident model)")]
        for case_session, scale, batch_size, subset, description in cases:
            chosen = [texts[i] for i in subset]
            result = report.call(predict_without_torch, case_session, tokenizer_file, chosen, id2label,
                                 batch_size=batch_size, name="predict_without_torch")
            if result is Ellipsis:  # the FIX line says what was raised; probes tell why when they can
                def runs_on(some_texts, case_session=case_session):
                    return _runs(predict_without_torch, case_session, tokenizer_file, some_texts, id2label)

                too_long = [texts[i] for i in subset if token_counts[i] > 512]
                if getattr(case_session, "fed", None) is not None:
                    declared = [node.name for node in case_session.get_inputs()]
                    report.fail(f"{description}: session.run got {case_session.fed}, the graph declares "
                                f"{declared}: feed exactly the inputs session.get_inputs() lists (token_type_ids: "
                                "the encodings' type_ids)")
                elif too_long and uneven_pair and runs_on(uneven_pair[:1]) and not runs_on(too_long[:1]):
                    report.fail("one text is longer than the model's 512 positions: enable truncation on the "
                                "tokenizer (enable_truncation(max_length=512))")
                elif uneven_pair and runs_on(uneven_pair[:1]) and not runs_on(uneven_pair):
                    report.fail("one text runs, two texts of different lengths in one batch do not: enable padding "
                                "on the tokenizer (enable_padding(pad_id=..., pad_token='[PAD]')), so that each "
                                "batch is one rectangle of ids")
                return report
            if not isinstance(result, tuple | list) or len(result) != 2:
                report.fail(f"predict_without_torch should return (probs, labels), got {type(result).__name__}")
                return report
            probs, labels = result
            if isinstance(probs, torch.Tensor):
                report.fail("probs is a torch tensor: the point is to need no PyTorch; return a NumPy array")
                return report
            probs = report.tensor(probs, "probs")
            if probs is None:
                return report
            if tuple(probs.shape) != (len(chosen), 2):
                rows = probs.shape[0] if probs.ndim == 2 and probs.shape[1] == 2 else None
                if rows is not None and rows < len(chosen) and rows == len(chosen) - len(chosen) % batch_size:
                    report.fail(f"{description}: probs has {rows} rows for {len(chosen)} texts: the last, partial "
                                f"batch (texts {rows} to {len(chosen) - 1}) is left out; range(0, len(texts), "
                                "batch_size) reaches it")
                else:
                    report.fail(f"probs has shape {tuple(probs.shape)}, expected {(len(chosen), 2)}")
                return report
            logits = expected_logits[subset] * scale
            wanted = torch.softmax(logits, dim=-1)
            if not bool(torch.isfinite(probs).all()):
                bad = [subset[i] for i in torch.nonzero(~torch.isfinite(probs).all(dim=-1)).flatten().tolist()]
                hint = (": np.exp overflowed on these large logits; subtract each row's maximum before the "
                        "exponential (a numerically stable softmax)" if scale > 1 else "")
                report.fail(f"{description}: probs hold NaN or inf (texts {bad[:5]}){hint}")
                return report
            right = torch.allclose(probs, wanted, atol=1e-4)
            if not right and torch.allclose(probs, torch.sigmoid(logits), atol=1e-4):
                report.fail(f"{description}: each value is the sigmoid of its own logit; the exercise asks for a "
                            "softmax over each row's labels (each row sums to 1)")
                return report
            sums = probs.sum(dim=-1)
            if not right and not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                hint = ("they look like logits: apply a softmax" if (probs < 0).any() else
                        "is the softmax taken over the wrong axis? Each row (one text) sums to 1")
                report.fail(f"{description}: rows of probs sum to {sums.min().item():.4f}..{sums.max().item():.4f}, "
                            f"not 1: {hint}")
                return report
            if not right:
                rows = (probs - wanted).abs().amax(dim=-1)
                wrong_rows = [subset[i] for i in torch.nonzero(rows > 1e-4).flatten().tolist()]
                lengths = [token_counts[i] for i in subset]
                padded = [subset[i] for i, length in enumerate(lengths) if length < max(lengths)]
                too_long = [subset[i] for i, length in enumerate(lengths) if length > 512]
                distances = (probs[:, None, :] - wanted[None, :, :]).abs().amax(dim=-1)  # (got, expected)
                if bool((distances.min(dim=1).values < 1e-4).all()):
                    report.fail(f"{description}: every row is right but some are in the wrong place (texts "
                                f"{wrong_rows[:5]}): keep the order of the texts")
                elif wrong_rows and set(wrong_rows) <= set(too_long):
                    report.fail(f"{description}: only the text past 512 tokens differs (texts {wrong_rows[:5]}): "
                                "truncate at max_length=512, the model's positions (special tokens included)")
                elif wrong_rows and set(wrong_rows) <= set(padded):
                    report.fail(f"{description}: only padded rows differ (texts {wrong_rows[:5]}): feed the "
                                "tokenizer's attention mask, so padding does not count as text")
                else:
                    report.fail(f"{description}: probs differ from the ONNX model's softmax by up to "
                                f"{rows.max().item():.2e} (texts {wrong_rows[:5]})")
                return report
            wanted_labels = [id2label[int(i)] for i in wanted.argmax(dim=-1)]
            if isinstance(labels, np.ndarray) and labels.ndim == 1:
                labels = labels.tolist()  # an array of names is as good as a list
            if not isinstance(labels, list | tuple) or list(labels) != wanted_labels:
                shown = list(labels)[:3] if isinstance(labels, list | tuple) else type(labels).__name__
                report.fail(f"{description}: labels should be the names id2label gives ({wanted_labels[:3]}...), "
                            f"got {shown}")
                return report
            report.ok(f"{description}: probs equal the ONNX model's softmax, labels by id2label")
    return report
