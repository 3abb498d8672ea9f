"""Checkers for the exercises of chapter 17 (ONNX): a sentence-embedding graph, cold start against warm latency,
and a prediction path without PyTorch.

The export checker runs the learner's graph with ONNX Runtime on small random BERTs of two sizes (another width,
head count and pad id than the chapter's model), at several batch sizes and lengths, with padded rows, and compares
with mean pooling computed in PyTorch. The latency checker gives the learner a fake session and a fake clock, so
every expected figure is exact and the check is the same on any machine. The last checker runs the course
classifier's ONNX file on reviews of many lengths, one far past the model's 512 positions.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from behind_pipeline.checks._core import CheckReport


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
    }


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
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "embedder.onnx"
            if not report.answered(export_embedder, "export_embedder"):
                return report
            try:  # what it returns does not matter: the file does
                export_embedder(encoder, path)
            except Exception as error:  # a learner's bug must become a message, not a crashed notebook
                report.fail(f"export_embedder(...) raised {type(error).__name__}: {first_line(error)}")
                return report
            if not path.exists():
                report.fail(f"{description}: nothing was written at the path given to export_embedder (still "
                            "`...`? export to `path`)")
                return report
            try:
                onnx.checker.check_model(onnx.load(str(path)))
                session = ort_session(path)
            except Exception as error:  # a malformed file must become a message
                report.fail(f"{description}: the file is not a valid ONNX graph ({type(error).__name__}: {error})")
                return report
            names = [node.name for node in session.get_inputs()]
            if "attention_mask" not in names:
                report.fail(f"{description}: the graph's inputs are {names}, without attention_mask: padding would "
                            "count as text. Export with input_ids and attention_mask")
                return report
            unknown = [name for name in names if name not in ("input_ids", "attention_mask", "token_type_ids")]
            if unknown:
                report.fail(f"{description}: unexpected graph inputs {unknown}; expected input_ids and "
                            "attention_mask")
                return report
            static = _static_axes(path)
            if static:
                report.fail(f"{description}: {'; '.join(static)}: declare the batch and sequence axes dynamic "
                            "(dynamic_shapes with torch.export.Dim)")
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
                expected = pooled(encoder, feed)
                if np.allclose(got, expected, atol=1e-4):
                    continue
                for message, wrong in _embedder_mistakes(encoder, feed).items():
                    if not np.allclose(wrong, expected, atol=1e-4) and np.allclose(got, wrong, atol=1e-4):
                        report.fail(f"{description}: {message}")
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

    def run(self, output_names, feed):
        if feed is not self.feed:
            self.wrong_feed = True
        cost = self.costs_ms[min(self.calls, len(self.costs_ms) - 1)]
        self.calls += 1
        self.clock.now += cost / 1000
        return [np.zeros((1, 2), dtype=np.float32)]


def run_costs_ms(warmup: int, repeats: int) -> list[float]:
    """The fake run times: a slow first call, warm-up calls slower than the steady state, then a steady state
    with a spike every 13 calls (so mean, median, p95 and maximum all differ)."""
    warming = [30.0 - 4.0 * i for i in range(warmup)]
    steady = [3.0 + 0.5 * ((7 * j) % 5) + (15.0 if j % 13 == 12 else 0.0) for j in range(repeats + 20)]
    return [45.0] + warming + steady


# (load ms, warmup, repeats, what the case exposes)
COLD_CASES = [
    (300.0, 3, 40, "3 warm-up calls, 40 timed"),
    (120.0, 5, 21, "5 warm-up calls, 21 timed"),
    (80.0, 0, 10, "no warm-up asked for (the boundary): 10 timed"),
]
COLD_KEYS = ("load_ms", "first_ms", "median_ms", "p95_ms")


def _cold_expected(load_ms, warmup, repeats) -> dict[str, float]:
    costs = run_costs_ms(warmup, repeats)
    timed = np.asarray(costs[1 + warmup:1 + warmup + repeats])
    return {"load_ms": load_ms, "first_ms": costs[0], "median_ms": float(np.median(timed)),
            "p95_ms": float(np.percentile(timed, 95)), "timed": timed}


def _p95_accepted(value: float, timed: np.ndarray) -> bool:
    """Any 95th percentile between the two order statistics around rank 0.95 (n - 1): linear, nearest, lower."""
    ordered = np.sort(timed)
    position = 0.95 * (len(ordered) - 1)
    low, high = ordered[int(np.floor(position))], ordered[int(np.ceil(position))]
    return low - 1e-6 <= value <= high + 1e-6


def _cold_mistakes(load_ms, warmup, repeats) -> dict[str, dict]:
    costs = np.asarray(run_costs_ms(warmup, repeats))
    timed = costs[1 + warmup:1 + warmup + repeats]
    all_after_first = costs[1:1 + warmup + repeats]
    with_first = np.concatenate([costs[:1], timed])
    return {
        "the warm-up calls are timed too: they are there to be left out of the figures (a latency measured "
        "without warm-up)": {"median_ms": np.median(all_after_first), "p95_ms": np.percentile(all_after_first, 95)},
        "the first (cold) call is counted among the warm ones: it belongs in first_ms only":
            {"median_ms": np.median(with_first), "p95_ms": np.percentile(with_first, 95)},
        "median_ms is the mean: a few slow calls pull the mean up, the median is the middle value":
            {"median_ms": timed.mean()},
        "p95_ms is the maximum: the 95th percentile is the value 95% of calls stay under (np.percentile(..., 95))":
            {"p95_ms": timed.max()},
        "load_ms includes the first run: time make_session() alone": {"load_ms": load_ms + costs[0]},
        "first_ms is in seconds; the keys ask for milliseconds": {"first_ms": costs[0] / 1000},
        "median_ms is in seconds; the keys ask for milliseconds": {"median_ms": np.median(timed) / 1000},
    }


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
        values = {}
        for key in COLD_KEYS:
            value = report.tensor(result[key], f"result[{key!r}]", shape=())
            if value is None:
                return report
            values[key] = value.item()
        expected = _cold_expected(load_ms, warmup, repeats)
        right = (abs(values["load_ms"] - expected["load_ms"]) < 1e-6
                 and abs(values["first_ms"] - expected["first_ms"]) < 1e-6
                 and abs(values["median_ms"] - expected["median_ms"]) < 1e-6
                 and _p95_accepted(values["p95_ms"], expected["timed"]))
        if right:
            report.ok(f"{description}: load {expected['load_ms']:.0f} ms, first call {expected['first_ms']:.0f} "
                      f"ms, warm median {expected['median_ms']:.2f} ms, p95 {expected['p95_ms']:.2f} ms")
            continue
        for message, wrong in _cold_mistakes(load_ms, warmup, repeats).items():
            if any(abs(values[key] - value) < 1e-6 and abs(value - expected[key]) > 1e-6
                   for key, value in wrong.items()):
                report.fail(f"{description}: {message}")
                return report
        shown = ", ".join(f"{key} {values[key]:.3f} (expected {expected[key]:.3f})" for key in COLD_KEYS)
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


def check_predict_without_torch(predict_without_torch, session=None, tokenizer=None, texts=None) -> CheckReport:
    """``predict_without_torch(session, tokenizer_file, texts, id2label)`` -> (probs, labels) as ``pipeline`` gives."""
    from transformers import AutoTokenizer

    from behind_pipeline.data import load_rotten_tomatoes
    from behind_pipeline.models import classifier_id
    from behind_pipeline.onnx_export import OnnxClassifier
    from behind_pipeline.predict import predict_logits

    report = CheckReport("Predictions without PyTorch")
    session = session or course_onnx_session()
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(classifier_id())
    if texts is None:
        test_texts = list(load_rotten_tomatoes()["test"]["text"])
        texts = test_texts[:36] + ["Superb.", long_review(test_texts)]  # 38: batches of 32 leave a partial one
    id2label = {0: "rotten", 1: "fresh"}
    expected_logits = predict_logits(OnnxClassifier(session), tokenizer, texts).double()  # (texts, labels)
    expected = torch.softmax(expected_logits, dim=-1)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        tokenizer_file = Path(folder) / "tokenizer.json"
        # Many tokenizer.json files on the Hub neither pad nor truncate: the learner's code must set both.
        settings = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        settings["truncation"], settings["padding"] = None, None
        tokenizer_file.write_text(json.dumps(settings), encoding="utf-8")
        tokenizer_file = str(tokenizer_file)
        for batch_size, subset, description in ((32, list(range(len(texts))), "38 reviews, one past 512 tokens"),
                                                (8, [5, 1, 37, 2, 36], "5 reviews out of order, batches of 8"),
                                                (32, [3], "a single review")):
            chosen = [texts[i] for i in subset]
            result = report.call(predict_without_torch, session, tokenizer_file, chosen, id2label,
                                 batch_size=batch_size, name="predict_without_torch")
            if result is Ellipsis:
                if any(len(tokenizer(text)["input_ids"]) > 512 for text in chosen):
                    report.fail("one text is longer than the model's 512 positions: enable truncation on the "
                                "tokenizer (enable_truncation(max_length=512))")
                return report
            if not isinstance(result, tuple | list) or len(result) != 2:
                report.fail(f"predict_without_torch should return (probs, labels), got {type(result).__name__}")
                return report
            probs, labels = result
            if isinstance(probs, torch.Tensor):
                report.fail("probs is a torch tensor: the point is to need no PyTorch; return a NumPy array")
                return report
            probs = report.tensor(probs, "probs", shape=(len(chosen), 2))
            if probs is None:
                return report
            sums = probs.sum(dim=-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                hint = ("they look like logits: apply a softmax" if (probs < 0).any() else
                        "is the softmax taken over the wrong axis? Each row (one text) sums to 1")
                report.fail(f"{description}: rows of probs sum to {sums.min().item():.4f}..{sums.max().item():.4f}, "
                            f"not 1: {hint}")
                return report
            wanted = expected[subset]
            if not torch.allclose(probs, wanted, atol=1e-4):
                rows = (probs - wanted).abs().amax(dim=-1)
                wrong_rows = [subset[i] for i in torch.nonzero(rows > 1e-4).flatten().tolist()]
                lengths = [len(tokenizer(texts[i])["input_ids"]) for i in subset]
                padded = [subset[i] for i, length in enumerate(lengths) if length < max(lengths)]
                distances = (probs[:, None, :] - wanted[None, :, :]).abs().amax(dim=-1)  # (got, expected)
                if bool((distances.min(dim=1).values < 1e-4).all()):
                    report.fail(f"{description}: every row is right but some are in the wrong place (texts "
                                f"{wrong_rows[:5]}): keep the order of the texts")
                elif wrong_rows and set(wrong_rows) <= set(padded):
                    report.fail(f"{description}: only padded rows differ (texts {wrong_rows[:5]}): feed the "
                                "tokenizer's attention mask, so padding does not count as text")
                else:
                    report.fail(f"{description}: probs differ from the ONNX model's softmax by up to "
                                f"{rows.max().item():.2e} (texts {wrong_rows[:5]})")
                return report
            wanted_labels = [id2label[int(i)] for i in wanted.argmax(dim=-1)]
            if not isinstance(labels, list | tuple) or list(labels) != wanted_labels:
                shown = list(labels)[:3] if isinstance(labels, list | tuple) else type(labels).__name__
                report.fail(f"{description}: labels should be the names id2label gives ({wanted_labels[:3]}...), "
                            f"got {shown}")
                return report
            report.ok(f"{description}: probs equal the ONNX model's softmax, labels by id2label")
    return report
