"""Chapter 17: the ONNX export equals PyTorch, the session is set up fairly, the cache works, and the checkers accept
the solutions and reject typical wrong answers.

Exports here use tiny random BERTs (one or two layers of width 16-32): what is tested (dynamic axes, the mask,
parity, the int8 rewrite, the cache) does not depend on the size, and each export takes a second or two.
"""

import time

import numpy as np
import onnx
import pytest
import torch

from behind_pipeline import measure, onnx_export
from behind_pipeline.checks.ch17_onnx import (
    check_cold_and_warm,
    check_export_embedder,
    check_predict_without_torch,
)
from behind_pipeline.onnx_export import (
    OnnxClassifier,
    export_classifier,
    graph_axes,
    ort_session,
    quantize_int8,
    quiet,
    session_options,
)
from behind_pipeline.predict import predict_logits

from checker_asserts import assert_rejected, failures
from tiny_models import tiny_bert_classifier


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tokenizer):
    classifier = tiny_bert_classifier(tokenizer.vocab_size)
    path = export_classifier(classifier, tokenizer, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return classifier, path


# --- the chapter's code ---------------------------------------------------------------------------------------------


def test_export_has_dynamic_axes_and_passes_the_checker(tiny_export):
    _, path = tiny_export
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    axes = graph_axes(path)
    assert axes["input_ids"] == ["batch", "sequence"] and axes["attention_mask"] == ["batch", "sequence"]
    assert axes["logits"] == ["batch", 2]


def test_onnx_logits_equal_pytorch_at_other_batch_sizes_and_lengths(tiny_export, tokenizer, splits):
    classifier, path = tiny_export
    texts = list(splits["test"]["text"][:70])
    wrapped = OnnxClassifier(ort_session(path))
    expected = predict_logits(classifier, tokenizer, texts, batch_size=16)
    for batch_size in (1, 7, 64):  # none of them the export example's batch of 2
        got = predict_logits(wrapped, tokenizer, texts, batch_size=batch_size)
        assert (got - expected).abs().max().item() < 1e-4
    assert not torch.allclose(expected[:, 0], expected[:, 1])  # the logits are not a constant: parity means something


def test_onnx_classifier_refuses_a_feed_without_the_mask(tiny_export, tokenizer):
    _, path = tiny_export
    encoding = tokenizer(["a film", "a much longer film review"], padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match="attention_mask"):
        OnnxClassifier(ort_session(path))(input_ids=encoding["input_ids"])


def test_session_options_fix_threads_and_turn_spinning_off():
    import onnxruntime as ort

    options = session_options(threads=3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # ORT's default
    spinning = session_options(spinning=True, level="disabled")
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spinning.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with pytest.raises(KeyError):
        session_options(level="maximum")


def test_optimized_graph_is_saved_once_has_fewer_nodes_and_the_same_logits(tiny_export, tokenizer, splits,
                                                                            monkeypatch):
    classifier, path = tiny_export
    counts = {}
    for level in onnx_export.OPTIMIZATION_LEVELS:
        saved = onnx_export.optimized_onnx_file(path, level)
        assert saved.name == f"tiny-optimized-{level}.onnx" and saved.parent == path.parent
        counts[level] = len(onnx.load(str(saved)).graph.node)
    assert counts["disabled"] == len(onnx.load(str(path)).graph.node)  # disabled: the exported graph as it is
    assert counts["all"] <= counts["extended"] < counts["disabled"]  # fused (basic may add a node: a split Gather)
    saved = onnx_export.optimized_onnx_file(path, "all")
    monkeypatch.setattr(onnx_export, "session_options", lambda *a, **k: pytest.fail("optimized again"))
    assert onnx_export.optimized_onnx_file(path, "all") == saved  # reused
    monkeypatch.undo()
    texts = list(splits["test"]["text"][:20])
    expected = predict_logits(classifier, tokenizer, texts)
    loaded = OnnxClassifier(ort_session(saved, level="disabled"))  # the cold-start fix: no optimization at load
    assert (predict_logits(loaded, tokenizer, texts) - expected).abs().max().item() < 1e-4


def profiled_session(path, folder, runs: int):
    """A profiling session of the exported graph that has run ``runs`` times on one short text."""
    session = ort_session(path, profile_prefix=str(folder / "profile"))
    feed = {"input_ids": np.array([[101, 2009, 102]]), "attention_mask": np.ones((1, 3), dtype=np.int64)}
    for _ in range(runs):
        session.run(None, feed)
    return session


def test_profile_sums_node_times_by_operator_type(tiny_export, tmp_path):
    _, path = tiny_export
    session = profiled_session(path, tmp_path, runs=4)
    profile = onnx_export.profile_by_op_type(session)
    runs = profile.pop("runs")
    assert runs["calls"] == 4 and runs["ms"] > 0
    nodes = len(onnx.load(str(onnx_export.optimized_onnx_file(path, "all"))).graph.node)
    assert sum(entry["calls"] for entry in profile.values()) == 4 * nodes  # every node of the optimized graph, per run
    assert sum(entry["ms"] for entry in profile.values()) <= runs["ms"]  # node time is part of the run's time
    assert not list(tmp_path.glob("profile*"))  # the trace file is removed


def test_profile_leaves_out_the_warmup_runs(tiny_export, tmp_path):
    _, path = tiny_export
    session = profiled_session(path, tmp_path, runs=5)
    assert onnx_export.profile_by_op_type(session, skip_runs=2)["runs"]["calls"] == 3


def test_interleaved_samples_take_turns_and_time_only_after_the_warmup():
    order, now = [], [0.0]

    def run(name, cost):
        def call():
            order.append(name)
            now[0] += cost
        return call

    samples = measure.interleaved_samples({"a": run("a", 1.0), "b": run("b", 2.0)}, warmup=1, repeats=3,
                                              clock=lambda: now[0])
    assert order == ["a", "b"] * 4  # turns, warm-up round included
    assert samples == {"a": [1.0] * 3, "b": [2.0] * 3}
    assert measure.spread_ms([0.001, 0.002, 0.003, 0.004]) == "2.50 ms (middle half 1.75-3.25, 4 calls)"


def test_fingerprint_changes_with_the_exporter_code_and_the_library_versions(tmp_path, monkeypatch, tokenizer):
    folder = tmp_path / "model"
    tiny_bert_classifier(tokenizer.vocab_size).save_pretrained(folder)
    first = onnx_export.export_fingerprint(str(folder))
    assert onnx_export.export_fingerprint(str(folder)) == first
    for name in ("onnx", "onnxscript", "onnxruntime", "torch"):
        versions = {**onnx_export.package_versions(), name: "0.0.0"}
        monkeypatch.setattr(onnx_export, "package_versions", lambda versions=versions: versions)
        assert onnx_export.export_fingerprint(str(folder)) != first, name
        monkeypatch.undo()
    monkeypatch.setattr(onnx_export, "WRITERS", (*onnx_export.WRITERS[:1], tiny_bert_classifier))  # other code
    assert onnx_export.export_fingerprint(str(folder)) != first
    monkeypatch.undo()
    assert "def export_classifier" in onnx_export.writer_source() and "def quantize_int8" in onnx_export.writer_source()


def test_torch_timing_process_gets_the_wait_policy_asked_for(monkeypatch):
    import subprocess

    calls = []

    def fake_run(command, env, **kwargs):
        calls.append((command, env))
        return subprocess.CompletedProcess(command, 0, stdout='{"1": {"median_ms": 5.0, "p95_ms": 6.0}}\n')

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(subprocess, "run", fake_run)
    figures = onnx_export.torch_latency_in_fresh_process((1,), 1, 2, omp_wait_policy="PASSIVE")
    assert figures == {1: {"median_ms": 5.0, "p95_ms": 6.0}}
    assert calls[-1][1]["OMP_WAIT_POLICY"] == "PASSIVE" and "--time-torch" in calls[-1][0]
    onnx_export.torch_latency_in_fresh_process((1,), omp_wait_policy=None)
    assert "OMP_WAIT_POLICY" not in calls[-1][1]  # unset: libgomp's default, not the caller's setting


def test_onnx_classifier_goes_into_a_pipeline_with_the_config(tiny_export, tokenizer, splits):
    import logging

    from transformers import pipeline

    classifier, path = tiny_export
    classifier.config.id2label = {0: "rotten", 1: "fresh"}
    wrapped = OnnxClassifier(ort_session(path), config=classifier.config)
    logging.getLogger("transformers.pipelines.base").setLevel(logging.CRITICAL)  # "not supported": the class name
    clf = pipeline("text-classification", model=wrapped, tokenizer=tokenizer)
    texts = list(splits["test"]["text"][:6])
    expected = predict_logits(classifier, tokenizer, texts).softmax(dim=-1)
    answers = clf(texts)
    assert [a["label"] for a in answers] == [classifier.config.id2label[int(i)] for i in expected.argmax(dim=-1)]
    assert np.allclose([a["score"] for a in answers], expected.max(dim=-1).values.numpy(), atol=1e-5)


def test_pre_processing_marks_the_graph_and_per_channel_gives_one_scale_per_column(tiny_export, tmp_path):
    from onnxruntime.quantization.quant_utils import model_has_pre_process_metadata

    _, path = tiny_export
    prepared = onnx_export.pre_process(path, tmp_path / "prepared.onnx")
    assert model_has_pre_process_metadata(onnx.load(str(prepared)))
    assert not model_has_pre_process_metadata(onnx.load(str(path)))

    def scale_sizes(model_path):
        model = onnx.load(str(model_path))
        return sorted({int(np.prod(t.dims)) for t in model.graph.initializer
                       if t.name.endswith("_scale") and t.data_type == onnx.TensorProto.FLOAT})

    per_tensor = quantize_int8(prepared, tmp_path / "tensor.onnx")
    per_channel = quantize_int8(prepared, tmp_path / "channel.onnx", per_channel=True)
    assert scale_sizes(per_tensor) == [1]
    assert max(scale_sizes(per_channel)) > 1  # a vector of scales: one per output column


def test_pre_processing_needs_auto_merge_on_the_exported_bert(tiny_export, tmp_path, monkeypatch):
    """What pre_process's docstring and chapter 17 say: without auto_merge, ORT's symbolic shape inference stops."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _, path = tiny_export
    monkeypatch.chdir(tmp_path)  # on failure it saves its half-inferred graph in the working folder
    with quiet(), pytest.raises(Exception, match="Incomplete symbolic shape inference"):
        quant_pre_process(str(path), str(tmp_path / "prepared.onnx"))


def test_reduce_range_keeps_weights_in_7_bits(tiny_export, tmp_path):
    _, path = tiny_export

    def widest_weight(model_path):
        model = onnx.load(str(model_path))
        return max(int(np.abs(onnx.numpy_helper.to_array(t).astype(np.int32)).max())
                   for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)

    assert widest_weight(quantize_int8(path, tmp_path / "full.onnx")) == 127
    assert widest_weight(quantize_int8(path, tmp_path / "reduced.onnx", reduce_range=True)) <= 64


def test_int8_rewrites_matmuls_and_stays_close(tiny_export, tokenizer, splits, tmp_path):
    classifier, path = tiny_export
    int8_path = quantize_int8(path, tmp_path / "int8.onnx")
    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert int8_path.stat().st_size < 0.5 * path.stat().st_size  # embeddings and matrices in int8
    texts = list(splits["test"]["text"][:32])
    fp32 = predict_logits(classifier, tokenizer, texts)
    int8 = predict_logits(OnnxClassifier(ort_session(int8_path)), tokenizer, texts)
    diff = (int8 - fp32).abs().max().item()
    assert 0 < diff < 0.5 * (fp32.max() - fp32.min()).item()  # rounded, not broken


def test_export_file_is_made_once_and_again_when_the_weights_change(tmp_path, monkeypatch, tokenizer):
    folder = tmp_path / "model"
    tiny_bert_classifier(tokenizer.vocab_size).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    monkeypatch.setattr(onnx_export, "ONNX_DIR", tmp_path / "onnx")
    first = onnx_export.classifier_onnx_file(str(folder))
    assert first.exists() and first.is_relative_to(tmp_path / "onnx")
    exported = []
    monkeypatch.setattr(onnx_export, "export_classifier", lambda *args: exported.append(args))
    assert onnx_export.classifier_onnx_file(str(folder)) == first and not exported  # reused, not exported again
    tiny_bert_classifier(tokenizer.vocab_size, seed=1).save_pretrained(folder)  # "retrained"
    with pytest.raises(AttributeError):  # the stub exporter returns None: a new export was attempted
        onnx_export.classifier_onnx_file(str(folder))
    assert len(exported) == 1


def test_quiet_hides_warnings_and_prints(capsys):
    import warnings

    with quiet():
        warnings.warn("noise", UserWarning, stacklevel=1)
        print("progress line")
    assert capsys.readouterr().out == ""


# --- Exercise 1: a sentence-embedding graph ------------------------------------------------------------------------


def embedder_exporter(pool="mean", dynamic=True, with_mask=True, mask_in_encoder=True):
    class Pooled(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask=None):
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            hidden = self.encoder(input_ids=input_ids,
                                  attention_mask=mask if mask_in_encoder else None).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            if pool == "cls":
                return hidden[:, 0]
            if pool == "unmasked_mean":
                return hidden.mean(dim=1)
            if pool == "tokens":
                return hidden
            return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def export(encoder, path):
        input_ids = torch.randint(1, encoder.config.vocab_size, (2, 6))
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, 4:] = 0
        names = ["input_ids", "attention_mask"] if with_mask else ["input_ids"]
        args = (input_ids, attention_mask) if with_mask else (input_ids,)
        axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
        shapes = {name: axes for name in names} if dynamic else None
        with quiet():
            torch.onnx.export(Pooled(encoder).eval(), args, path, dynamo=True, input_names=names,
                              output_names=["embeddings"], external_data=False, dynamic_shapes=shapes)
        return path

    return export


def test_export_checker_accepts_a_right_export_whatever_it_returns():
    """The file is what counts. The solution, which returns the path, is checked where nbval runs its notebook
    (solutions/17_onnx_solutions.ipynb): here the same export returning None, so the graphs are exported once."""
    export = embedder_exporter()
    report = check_export_embedder(lambda encoder, path: export(encoder, path) and None)
    assert report.passed, report


@pytest.mark.parametrize("mistake, exporter, words", [
    ("without_attention_mask_input", embedder_exporter(with_mask=False), ["without attention_mask"]),
    ("static_batch_axis", embedder_exporter(dynamic=False), ["batch axis", "fixed", "dynamic"]),
    ("pooling_ignores_mask", embedder_exporter(pool="unmasked_mean"), ["ignores the mask"]),
    ("cls_token", embedder_exporter(pool="cls"), ["first token"]),
    ("token_vectors_not_pooled", embedder_exporter(pool="tokens"), ["shape", "pool"]),
    ("mask_not_given_to_encoder", embedder_exporter(mask_in_encoder=False), ["not the encoder"]),
])
def test_export_checker_rejects(mistake, exporter, words):
    assert_rejected(check_export_embedder(exporter), *words)


def test_export_checker_reports_a_missing_file_and_a_raising_function():
    assert_rejected(check_export_embedder(lambda encoder, path: path), "nothing was written")

    def broken(encoder, path):
        raise RuntimeError("export failed")

    # the learner's own line, as every checker's call does (checks._core.describe_error)
    assert_rejected(check_export_embedder(broken), "raised RuntimeError: export failed", "of your broken")
    assert_rejected(check_export_embedder(...), "still `...`")


# --- Exercise 2: cold start against warm latency -------------------------------------------------------------------


def _load_and_first_call(make_session, feed, clock):
    """Open the session and run it once, timing each on ``clock`` (read before and after): (session, load seconds,
    first-call seconds), the cold half of an answer as the solution times it."""
    start = clock()
    session = make_session()
    load = clock() - start
    start = clock()
    session.run(None, feed)
    return session, load, clock() - start


def cold_and_warm_with(warm_from_first=False, timed_warmup=False, skip_warmup=False, mean=False, spread="percentile",
                       load_includes_first=False, seconds=False):
    def cold_and_warm(make_session, feed, warmup=3, repeats=20, clock=time.perf_counter):
        start = clock()
        session = make_session()
        if not load_includes_first:
            load = clock() - start
        first_start = clock()
        session.run(None, feed)
        first = clock() - first_start
        if load_includes_first:
            load = clock() - start
        samples = [first] if warm_from_first else []
        for _ in range(0 if skip_warmup else warmup):
            begin = clock()
            session.run(None, feed)
            if timed_warmup:
                samples.append(clock() - begin)
        for _ in range(repeats):
            begin = clock()
            session.run(None, feed)
            samples.append(clock() - begin)
        scale = 1 if seconds else 1000
        values = np.asarray(samples) * scale
        middle = values.mean() if mean else np.median(values)
        half = {"percentile": tuple(np.percentile(values, [25, 75])), "range": (values.min(), values.max()),
                "nearest": tuple(np.percentile(values, [25, 75], method="nearest")),
                "lower": tuple(np.percentile(values, [25, 75], method="lower")),
                "mean_and_sd": (values.mean() - values.std(), values.mean() + values.std()),
                "reversed": tuple(np.percentile(values, [75, 25])),
                "width": np.subtract(*np.percentile(values, [75, 25])),
                "spread_ms_text": measure.spread_ms(list(values / 1000)),
                "three_quartiles": np.percentile(values, [25, 50, 75])}[spread]
        return {"load_ms": load * scale, "first_ms": first * scale, "median_ms": middle, "middle_half_ms": half}

    return cold_and_warm


def test_cold_checker_accepts_the_solution_and_other_percentile_methods():
    assert check_cold_and_warm(cold_and_warm_with()).passed
    assert check_cold_and_warm(cold_and_warm_with(spread="nearest")).passed
    assert check_cold_and_warm(cold_and_warm_with(spread="lower")).passed


def test_cold_checker_accepts_the_chapter_latency_samples_and_a_list_for_the_middle_half():
    from behind_pipeline.measure import latency_samples

    def cold_and_warm(make_session, feed, warmup=3, repeats=20, clock=time.perf_counter):
        session, load, first = _load_and_first_call(make_session, feed, clock)
        samples = np.asarray(latency_samples(lambda: session.run(None, feed), warmup, repeats, clock)) * 1000
        return {"load_ms": load * 1000, "first_ms": first * 1000, "median_ms": np.median(samples),
                "middle_half_ms": [np.percentile(samples, 25), np.percentile(samples, 75)]}

    report = check_cold_and_warm(cold_and_warm)
    assert report.passed, report


@pytest.mark.parametrize("mistake, options, words", [
    ("latency_without_warmup", {"skip_warmup": True}, ["no warm-up"]),
    ("warmup_calls_timed", {"timed_warmup": True}, ["warm-up calls are timed"]),
    ("first_call_among_warm", {"warm_from_first": True}, ["first (cold) call"]),
    ("mean_not_median", {"mean": True}, ["mean"]),
    ("whole_range_not_middle_half", {"spread": "range"}, ["whole range", "25th and 75th"]),
    ("mean_and_sd_not_middle_half", {"spread": "mean_and_sd"}, ["standard deviation", "25th and the 75th"]),
    ("ends_reversed", {"spread": "reversed"}, ["lower end first"]),
    ("width_not_pair", {"spread": "width"}, ["one number", "width of the middle half"]),
    ("spread_ms_text", {"spread": "spread_ms_text"}, ["text", "two numbers"]),
    ("three_quartiles", {"spread": "three_quartiles"}, ["3 numbers", "(25th percentile, 75th percentile)"]),
    ("load_includes_first_run", {"load_includes_first": True}, ["load_ms includes"]),
    ("seconds_not_milliseconds", {"seconds": True}, ["seconds"]),
])
def test_cold_checker_rejects(mistake, options, words):
    assert_rejected(check_cold_and_warm(cold_and_warm_with(**options)), *words)


def test_cold_checker_counts_sessions_and_survives_odd_answers():
    def two_sessions(make_session, feed, warmup=3, repeats=20, clock=time.perf_counter):
        make_session()
        return cold_and_warm_with()(make_session, feed, warmup, repeats, clock)

    assert_rejected(check_cold_and_warm(two_sessions), "called 2 times")
    assert_rejected(check_cold_and_warm(lambda *args, **kwargs: [1.0, 2.0]), "dict")
    assert_rejected(check_cold_and_warm(lambda *args, **kwargs: None), "returned None")


# --- Exercise 3: predictions without PyTorch ----------------------------------------------------------------------


def predictor(mask=True, truncate=True, axis=-1, names=True, keep_order=True, softmax=True):
    def predict_without_torch(session, tokenizer_file, texts, id2label, batch_size=32):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(tokenizer_file)
        if truncate:
            tokenizer.enable_truncation(max_length=512)
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
        declared = [node.name for node in session.get_inputs()]  # the inputs the graph declares
        order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if not keep_order else range(len(texts))
        ordered = [texts[i] for i in order]
        probs = []
        for start in range(0, len(ordered), batch_size):
            encodings = tokenizer.encode_batch(ordered[start:start + batch_size])
            ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
            attention = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
            arrays = {"input_ids": ids, "attention_mask": attention if mask else np.ones_like(ids),
                      "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64)}
            (logits,) = session.run(None, {name: arrays[name] for name in declared})
            if softmax:
                exp = np.exp(logits - logits.max(axis=axis, keepdims=True))
                probs.append(exp / exp.sum(axis=axis, keepdims=True))
            else:
                probs.append(logits)
        probs = np.concatenate(probs)
        labels = probs.argmax(axis=-1)
        return probs, [id2label[int(i)] if names else int(i) for i in labels]

    return predict_without_torch


def test_predict_checker_accepts_the_solution():
    assert check_predict_without_torch(predictor()).passed


@pytest.mark.parametrize("mistake, options, words", [
    ("session_without_attention_mask", {"mask": False}, ["attention mask"]),
    ("no_truncation", {"truncate": False}, ["truncation"]),
    ("softmax_over_the_batch_axis", {"axis": 0}, ["wrong axis"]),
    ("logits_not_probabilities", {"softmax": False}, ["softmax"]),
    ("label_ids_not_names", {"names": False}, ["id2label"]),
    ("order_of_texts_lost", {"keep_order": False}, ["order"]),
])
def test_predict_checker_rejects(mistake, options, words):
    report = check_predict_without_torch(predictor(**options))
    assert_rejected(report, *words)


def test_predict_checker_refuses_torch_tensors():
    def with_torch(session, tokenizer_file, texts, id2label, batch_size=32):
        probs, labels = predictor()(session, tokenizer_file, texts, id2label, batch_size)
        return torch.from_numpy(probs), labels

    assert_rejected(check_predict_without_torch(with_torch), "NumPy")



# --- Exercise 1: a sentence-embedding graph, more mistakes ----------------------------------------------------------


def exporter_with(pool="mean", names=("input_ids", "attention_mask"), ids_dtype=torch.int64, mask_dtype=None,
                  train=False, restore_eval=False):
    """The solution's export with one thing changed: the pooling, the input names, the example dtypes, the mode."""

    class Pooled(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            if pool == "normalized":  # sentence-transformers' Normalize module, after the pooling
                return torch.nn.functional.normalize(mean, p=2, dim=-1)
            if pool == "over_length":  # padding zeroed, but divided by the padded length
                return (hidden * weights).sum(dim=1) / attention_mask.shape[1]
            if pool == "max":
                return hidden.masked_fill(weights == 0, -1e9).max(dim=1).values
            return mean

    def export(encoder, path):
        input_ids = torch.randint(1, encoder.config.vocab_size, (2, 6), dtype=ids_dtype)
        attention_mask = torch.ones(input_ids.shape, dtype=mask_dtype or torch.int64)
        attention_mask[1, 4:] = 0
        if train:
            encoder.train()  # e.g. copied from a training loop
        axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
        with quiet():
            torch.onnx.export(Pooled(encoder).eval() if not train else Pooled(encoder).train(),
                              (input_ids, attention_mask), path, dynamo=True, input_names=list(names),
                              output_names=["embeddings"], external_data=False,
                              dynamic_shapes={"input_ids": axes, "attention_mask": axes})
        if restore_eval:
            encoder.eval()  # too late: the graph already holds dropout in training mode
        return path

    return export


@pytest.mark.parametrize("mistake, exporter, words", [
    ("l2_normalized_mean", exporter_with(pool="normalized"), ["L2 norm"]),
    ("masked_sum_over_padded_length", exporter_with(pool="over_length"), ["padded length"]),
    ("max_pooling", exporter_with(pool="max"), ["maximum"]),
    ("inputs_named_otherwise", exporter_with(names=("ids", "mask")), ["input_names"]),
    ("int32_example_ids", exporter_with(ids_dtype=torch.int32), ["input_ids takes tensor(int32)", "int64 example"]),
    ("float_example_mask", exporter_with(mask_dtype=torch.float32), ["attention_mask takes tensor(float)"]),
    ("exported_in_training_mode", exporter_with(train=True), ["training mode", ".eval()"]),
    ("training_mode_then_eval_restored", exporter_with(train=True, restore_eval=True), ["training mode", ".eval()"]),
])
def test_export_checker_names_more_mistakes(mistake, exporter, words):
    assert_rejected(check_export_embedder(exporter), *words)


# --- Exercise 2: cold start against warm latency, more mistakes and alternatives ------------------------------------


def timed_with(rounding=None, load_unit=1000, spread_unit=1000, first_from_load=False, cumulative=False,
               percents=(25, 75), quantiles=False, own_clock=False, feed_as=None):
    """The solution with one thing changed; ``feed_as`` runs the session with a copy of the feed, an int64 copy or
    the feed by keyword (ONNX Runtime's ``run(output_names, input_feed)``)."""
    import statistics

    def cold_and_warm(make_session, feed, warmup=3, repeats=20, clock=time.perf_counter):
        read = time.perf_counter if own_clock else clock
        keep = rounding or (lambda value: value)

        def run(session):
            if feed_as == "keyword":
                return session.run(None, input_feed=feed)
            if feed_as == "copy":
                return session.run(None, dict(feed))
            if feed_as == "int64":
                return session.run(None, {name: np.asarray(value, dtype=np.int64) for name, value in feed.items()})
            return session.run(None, feed)

        start = read()
        session = make_session()
        load = read() - start
        if not first_from_load:
            start = read()
        run(session)
        first = read() - start
        for _ in range(warmup):
            run(session)
        samples = []
        start = read()
        for _ in range(repeats):
            if not cumulative:
                start = read()
            run(session)
            samples.append(keep((read() - start) * 1000))
        if quantiles:
            low, _, high = statistics.quantiles(samples, n=4)
        else:
            low, high = np.percentile(samples, percents)
        return {"load_ms": keep(load * load_unit), "first_ms": keep(first * 1000),
                "median_ms": float(np.median(samples)),
                "middle_half_ms": (low * spread_unit / 1000, high * spread_unit / 1000)}

    return cold_and_warm


@pytest.mark.parametrize("mistake, options, words", [
    ("rounded_to_whole_ms", {"rounding": round}, ["whole milliseconds"]),
    ("truncated_to_whole_ms", {"rounding": int}, ["whole milliseconds"]),
    ("load_in_seconds", {"load_unit": 1}, ["load_ms is in seconds"]),
    ("middle_half_in_seconds", {"spread_unit": 1}, ["middle_half_ms is in seconds"]),
    ("first_includes_load", {"first_from_load": True}, ["first_ms includes the load"]),
    ("samples_measured_from_loop_start", {"cumulative": True}, ["start of the loop"]),
    ("percentiles_of_0_25_and_0_75", {"percents": (0.25, 0.75)}, ["[0.25, 0.75]", "percents"]),
    ("statistics_quantiles_exclusive", {"quantiles": True}, ["exclusive"]),
    ("real_clock_not_the_one_given", {"own_clock": True}, ["clock given was never read"]),
])
def test_cold_checker_names_more_mistakes(mistake, options, words):
    assert_rejected(check_cold_and_warm(timed_with(**options)), *words)


@pytest.mark.parametrize("feed_as", ["keyword", "copy", "int64"])
def test_cold_checker_accepts_the_feed_by_keyword_or_as_an_equal_copy(feed_as):
    report = check_cold_and_warm(timed_with(feed_as=feed_as))
    assert report.passed, report


# --- Exercise 3: predictions without PyTorch, more mistakes and alternatives ----------------------------------------


def predictor_with(names="declared", pad=True, max_length=512, stable=True, sigmoid=False, nan=False,
                   drop_last=False, labels_as_array=False, label_keys=int):
    """The solution with one thing changed (``names="two"``: input_ids and attention_mask, whatever the graph
    declares)."""

    def predict_without_torch(session, tokenizer_file, texts, id2label, batch_size=32):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(tokenizer_file)
        tokenizer.enable_truncation(max_length=max_length)
        if pad:
            tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
        fed = ([node.name for node in session.get_inputs()] if names == "declared"
               else ["input_ids", "attention_mask"])
        stop = len(texts) - len(texts) % batch_size if drop_last else len(texts)
        probs = []
        for start in range(0, stop, batch_size):
            encodings = tokenizer.encode_batch(texts[start:start + batch_size])
            arrays = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                      "token_type_ids": [e.type_ids for e in encodings]}
            (logits,) = session.run(None, {name: np.asarray(arrays[name], dtype=np.int64) for name in fed})
            if sigmoid:
                probs.append(1 / (1 + np.exp(-logits)))
                continue
            exp = np.exp(logits - logits.max(axis=-1, keepdims=True)) if stable else np.exp(logits.astype(np.float64))
            probs.append(exp / exp.sum(axis=-1, keepdims=True))
        probs = np.concatenate(probs)
        if nan:
            probs = probs * np.nan
        labels = [id2label[label_keys(index)] for index in probs.argmax(axis=-1)]
        return probs, np.array(labels) if labels_as_array else labels

    return predict_without_torch


@pytest.mark.parametrize("mistake, options, words", [
    ("unstable_softmax", {"stable": False}, ["overflowed", "stable softmax"]),
    ("two_inputs_whatever_the_graph_declares", {"names": "two"}, ["session.get_inputs()"]),
    ("sigmoid_not_softmax", {"sigmoid": True}, ["sigmoid"]),
    ("nan_probabilities", {"nan": True}, ["probs hold NaN or inf"]),
    ("last_partial_batch_dropped", {"drop_last": True}, ["partial batch"]),
    ("truncated_too_short", {"max_length": 256}, ["only the text past 512 tokens", "max_length=512"]),
])
def test_predict_checker_names_more_mistakes(mistake, options, words):
    report = check_predict_without_torch(predictor_with(**options))
    assert_rejected(report, *words)


@pytest.mark.parametrize("mistake, options, words, not_said", [
    ("padding_not_enabled", {"pad": False}, ["enable padding"], "enable truncation"),
    ("label_keys_as_strings", {"label_keys": str}, ["raised KeyError"], "enable truncation"),
])
def test_predict_checker_blames_truncation_only_when_it_is_the_cause(mistake, options, words, not_said):
    report = check_predict_without_torch(predictor_with(**options))
    assert_rejected(report, *words)
    assert not_said not in " ".join(failures(report)), report


def test_predict_checker_accepts_an_array_of_label_names():
    report = check_predict_without_torch(predictor_with(labels_as_array=True))
    assert report.passed, report


# --- A skeptical instructor's trial of the rewritten statement: float32 figures, more spreads named ----------------


def cold_and_warm_variant(middle_half=None, figures_as=None, first_with_warmup=False, warmup_last=False, unit=1000,
                          real_clock_for_runs=False):
    """The solution with one thing changed: how the middle half is taken from the timings (ms), the type the
    figures come back in, where the warm-up calls go, the unit, the clock that times the warm calls."""
    def cold_and_warm(make_session, feed, warmup=3, repeats=20, clock=time.perf_counter):
        session, load, first = _load_and_first_call(make_session, feed, clock)
        if first_with_warmup:  # the warm-up calls timed as part of the first call
            start = clock()
            for _ in range(warmup):
                session.run(None, feed)
            first += clock() - start
        for _ in range(0 if first_with_warmup or warmup_last else warmup):
            session.run(None, feed)
        read = time.perf_counter if real_clock_for_runs else clock
        samples = []
        for _ in range(repeats):
            start = read()
            session.run(None, feed)
            samples.append((read() - start) * unit)
        for _ in range(warmup if warmup_last else 0):
            session.run(None, feed)
        timed = np.asarray(samples)
        figures = {"load_ms": load * unit, "first_ms": first * unit, "median_ms": np.median(timed),
                   "middle_half_ms": (middle_half or (lambda t: tuple(np.percentile(t, [25, 75]))))(timed)}
        if figures_as == "float32":
            return {key: np.float32(value) if key != "middle_half_ms" else tuple(np.float32(value))
                    for key, value in figures.items()}
        if figures_as == "torch":
            return {key: torch.tensor(value, dtype=torch.float32) for key, value in figures.items()}
        return figures

    return cold_and_warm


@pytest.mark.parametrize("figures_as", ["float32", "torch"])
def test_cold_checker_accepts_figures_in_float32(figures_as):
    report = check_cold_and_warm(cold_and_warm_variant(figures_as=figures_as))  # 300.4 ms in float32: 300.39999
    assert report.passed, report


@pytest.mark.parametrize("mistake, options, words", [
    ("unsorted_positions", {"middle_half": lambda t: (t[len(t) // 4], t[3 * len(t) // 4])}, ["unsorted", "sort"]),
    ("middle_80_percent", {"middle_half": lambda t: tuple(np.percentile(t, [10, 90]))}, ["10th and the 90th"]),
    ("middle_90_percent", {"middle_half": lambda t: tuple(np.percentile(t, [5, 95]))}, ["5th and the 95th"]),
    ("median_and_p95", {"middle_half": lambda t: (np.median(t), np.percentile(t, 95))},
     ["median and the 95th percentile"]),
    ("first_includes_warmup", {"first_with_warmup": True}, ["first_ms includes the warm-up"]),
    ("warmup_after_timed", {"warmup_last": True}, ["warm-up calls come after the timed ones"]),
    ("microseconds", {"unit": 1e6}, ["microseconds"]),
    ("warm_calls_on_the_real_clock", {"real_clock_for_runs": True}, ["read 4 times", "clock()"]),
])
def test_cold_checker_names_the_instructors_mistakes(mistake, options, words):
    assert_rejected(check_cold_and_warm(cold_and_warm_variant(**options)), *words)
