"""The benchmark (`make bench`): its timing helpers, its ratios and targets, and a tiny real run that must write a
well-formed results file without touching the other sections. No timing thresholds: only structure and parity."""

import json
import subprocess
import sys

import numpy as np
import pytest

from behind_pipeline import bench, measure, paths

ROOT = paths.PROJECT_ROOT


class StepClock:
    """A fake clock that each ``run()`` call moves by the next scripted cost."""

    def __init__(self, costs):
        self.now, self.costs, self.calls = 0.0, list(costs), 0

    def __call__(self):
        return self.now

    def run(self):
        self.now += self.costs[self.calls]
        self.calls += 1


def test_latency_samples_times_only_the_calls_after_the_warmup():
    clock = StepClock([9.0, 8.0, 1.0, 2.0, 3.0])
    samples = measure.latency_samples(clock.run, warmup=2, repeats=3, clock=clock)
    assert samples == [1.0, 2.0, 3.0] and clock.calls == 5


def test_latency_samples_with_no_warmup_times_every_call():
    clock = StepClock([9.0, 1.0])
    assert measure.latency_samples(clock.run, warmup=0, repeats=2, clock=clock) == [9.0, 1.0]


def test_latency_summary_is_the_median_and_the_linear_p95_in_ms():
    samples = [0.001] * 18 + [0.010, 0.020]
    summary = measure.latency_summary(samples)
    assert summary["median_ms"] == pytest.approx(1.0)
    assert summary["p95_ms"] == pytest.approx(10.5)  # between the 19th (10 ms) and 20th (20 ms) value, not the max


def test_write_section_keeps_the_other_sections(tmp_path):
    """results.write_section, the one writer of results/bench.json's sections (models, service, Ray Serve)."""
    from behind_pipeline.results import write_section

    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"service": {"p95_ms": 12.0}, "models": {"old": True}}))
    write_section(path, bench.SECTION, {"new": 1})
    assert json.loads(path.read_text()) == {"service": {"p95_ms": 12.0}, "models": {"new": 1}}
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        write_section(path, bench.SECTION, {})
    assert path.read_text() == "[1, 2]"  # a refused file is left as it was


def row(variant, accuracy, medians, size):
    return {"variant": variant, "accuracy": accuracy, "macro_f1": accuracy - 0.01, "size_mib": size,
            "throughput_per_s": 1000 / medians["32"],
            "latency": {b: {"median_ms": m, "p95_ms": m * 1.1} for b, m in medians.items()}}


def test_ratios_and_targets_at_their_boundaries():
    rows = [row("fp32", 0.83, {"1": 10.0, "32": 170.0}, 86.0), row("dynamic_int8", 0.82, {"1": 5.0, "32": 100.0}, 55.0),
            row("onnx", 0.83, {"1": 10.0, "32": 150.0}, 87.0)]
    logits = {"fp32": np.array([[0.0, 1.0], [2.0, 0.0]]), "dynamic_int8": np.array([[0.5, 0.2], [2.0, 0.0]]),
              "onnx": np.array([[0.0, 1.0 + 5e-5], [2.0, 0.0]])}
    ratios = bench.compare_with_reference(rows, logits)
    assert ratios["fp32"]["speedup"] == {"1": 1.0, "32": 1.0} and ratios["fp32"]["max_abs_logit_diff"] == 0
    assert ratios["dynamic_int8"]["speedup"]["32"] == pytest.approx(1.7)
    assert ratios["dynamic_int8"]["accuracy_change_points"] == pytest.approx(-1.0)
    assert ratios["dynamic_int8"]["label_mismatches"] == 1
    assert ratios["dynamic_int8"]["size_ratio"] == pytest.approx(55 / 86)
    found = bench.targets(ratios, rows)
    assert found["dynamic_int8"]["met"] and found["onnx"]["met"]  # 1.7x and -1 point: at the limit, still met
    rows[1]["accuracy"] = 0.8199
    rows[2]["latency"]["1"]["median_ms"] = 10.01
    found = bench.targets(bench.compare_with_reference(rows, logits), rows)
    assert not found["dynamic_int8"]["met"] and not found["onnx"]["met"]
    logits["onnx"] = logits["fp32"] + 2e-4
    rows[2]["latency"]["1"]["median_ms"] = 5.0
    assert not bench.targets(bench.compare_with_reference(rows, logits), rows)["onnx"]["met"]  # fast, not equal


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        bench.run(["fp8"], "tiny", tmp_path / "bench.json")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    path.write_text(json.dumps({"service": {"measured": "elsewhere"}}))
    result = subprocess.run([sys.executable, "-m", "behind_pipeline.bench", "--tiny", "--output", str(path),
                             "--variants", "fp32,dynamic_int8,onnx"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(path.read_text())


def test_tiny_run_keeps_the_service_section(tiny_run):
    assert tiny_run["service"] == {"measured": "elsewhere"}


def test_tiny_run_writes_every_figure_of_every_variant(tiny_run):
    section = tiny_run["models"]
    assert section["setting"] == "tiny" and section["threads"] == 2
    assert section["machine"]["cores"] >= 1 and section["versions"]["onnxruntime"]
    assert section["measured_at"].endswith("UTC")
    assert [r["variant"] for r in section["variants"]] == ["fp32", "dynamic_int8", "onnx"]
    for r in section["variants"]:
        assert r["texts"] == 16 and 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1
        assert set(r["latency"]) == {"1", "8"}
        assert all(0 < t["median_ms"] <= t["p95_ms"] for t in r["latency"].values())
        assert r["throughput_per_s"] > 0 and r["size_mib"] > 1 and r["peak_memory_mib"] >= 0
    sizes = {r["variant"]: r["size_mib"] for r in section["variants"]}
    assert sizes["dynamic_int8"] < sizes["fp32"] < sizes["onnx"]  # int8 weights; the graph adds to the weights


def test_tiny_run_compares_within_the_run(tiny_run):
    section = tiny_run["models"]
    vs = section["vs_fp32"]
    assert vs["fp32"]["max_abs_logit_diff"] == 0 and vs["fp32"]["speedup"] == {"1": 1.0, "8": 1.0}
    assert vs["onnx"]["max_abs_logit_diff"] < 1e-4 and vs["onnx"]["label_mismatches"] == 0
    assert 0 < vs["dynamic_int8"]["max_abs_logit_diff"]  # int8 rounds: a real, non-zero difference
    assert set(section["targets"]) == {"onnx"}  # batch 32 was not timed in the tiny setting: no int8 verdict


def synthetic_results(service=False):
    rows = [row("fp32", 0.83, {"1": 10.0, "32": 170.0}, 86.7), row("onnx", 0.83, {"1": 9.0, "32": 160.0}, 87.5)]
    for r, label in zip(rows, ("PyTorch fp32", "ONNX Runtime fp32"), strict=True):
        r.update(label=label, peak_memory_mib=120.0)
    logits = {"fp32": np.zeros((2, 2)), "onnx": np.full((2, 2), 1e-6)}
    ratios = bench.compare_with_reference(rows, logits)
    section = {"setting": "full", "measured_at": "2026-11-26 06:00 UTC", "threads": 2,
               "machine": {"cpu": "Test CPU", "architecture": "x86_64", "cores": 2},
               "versions": {"torch": "2.13.0"}, "variants": rows, "vs_fp32": ratios,
               "targets": bench.targets(ratios, rows)}
    results = {"models": section}
    if service:
        figures = {"latency_batch_8": {"median_ms": 20.5, "p95_ms": 31.25},
                   "in_process_batch_32_texts_per_second": 90.0,
                   "throughput_micro_batching": {"texts_per_second": 70.0},
                   "throughput_one_by_one": {"texts_per_second": 35.0},
                   "micro_batching_vs_one_by_one": 2.0, "micro_batching_vs_in_process": 0.78}
        results["service"] = {"date": "2026-11-26", "run": "full", "settings": {"clients": 16},
                              "models": {"fp32": figures, "int8": figures}}
    return results


def test_bench_tables_render_every_variant_the_targets_and_the_service():
    import bench_tables

    text = bench_tables.block(synthetic_results(service=True), "_static/benchmark.png")
    assert "Test CPU" in text and "2 threads" in text and "2026-11-26 06:00 UTC" in text
    assert "| PyTorch fp32 | 6 | 0.8300 |" in text and "| ONNX Runtime fp32 |" in text  # throughput first
    assert "10.0 / 11.0" in text and "1.11x" in text  # fp32 batch 1 median / p95; onnx speed-up 10 / 9
    assert "- met: ONNX Runtime at least as fast" in text
    assert "![" in text and "](_static/benchmark.png)" in text
    assert "20.5 / 31.2" in text and "2.00x" in text and "| int8 |" in text  # the service's section
    assert "Not measured yet" in bench_tables.block({}, "x.png")
    assert "micro-batching" not in bench_tables.block(synthetic_results(), "x.png")


def test_bench_tables_are_current():
    result = subprocess.run([sys.executable, "tools/bench_tables.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


def test_bench_tables_show_compile_time_and_the_cpu_flags_when_measured():
    import bench_tables

    results = synthetic_results()
    section = results["models"]
    assert "torch.compile" not in bench_tables.block(results, "x.png")  # not measured: no section
    compiled = row("compiled", 0.83, {"1": 5.0, "32": 85.0}, 86.7)
    compiled.update(label="PyTorch fp32, torch.compile", peak_memory_mib=300.0, texts=1445,
                    first_call_seconds=42.25, second_call_seconds=0.0061, first_pass_seconds=63.5)
    section["variants"].append(compiled)
    section["variants"][0]["texts"] = 1445
    section["vs_fp32"] = bench.compare_with_reference(section["variants"], {
        "fp32": np.zeros((2, 2)), "onnx": np.zeros((2, 2)), "compiled": np.zeros((2, 2))})
    section["machine"].update(avx512_bf16=True, amx=False)
    text = bench_tables.block(results, "x.png")
    assert "first call on one review (it compiles): 42.2 s; second call: 6.1 ms" in text
    assert "first pass over the 1,445 test reviews" in text and "63.5 s" in text
    assert "batch 1 2.00x" in text  # fp32 10 ms / compiled 5 ms
    assert "AVX512-BF16 yes, AMX no" in text


def test_bench_tables_keep_every_table_narrow():
    """The page's tables are split so that none is wider than the article at 1280 px (`make browser` measures it);
    six columns of these headers fit, the nine of the old single table did not."""
    import bench_tables

    text = bench_tables.block(synthetic_results(service=True), "x.png")
    rules = [line for line in text.splitlines() if line.startswith("|---")]
    assert len(rules) >= 6 and max(rule.count("---") for rule in rules) <= 6
    assert "| PyTorch fp32 | 6 | 0.8300 |" in text  # throughput (1000 / 170 ms) first, next to accuracy


def test_bench_tables_refuse_a_file_that_lost_its_markers(tmp_path, monkeypatch, capsys):
    """Through blocks.update, as every renderer: a lost marker fails in both modes and names the file."""
    import bench_tables

    results = tmp_path / "bench.json"
    results.write_text(json.dumps(synthetic_results()))
    page, readme = tmp_path / "benchmark.md", tmp_path / "README.md"
    page.write_text("# Benchmark\n\nno block here\n")
    readme.write_text("<!-- bench-tables:start -->\n<!-- bench-tables:end -->\n")
    monkeypatch.setattr(bench_tables, "BENCH_FILE", results)
    monkeypatch.setattr(bench_tables, "PAGE", page)
    monkeypatch.setattr(bench_tables, "README", readme)
    monkeypatch.setattr(bench_tables, "PLOT", tmp_path / "benchmark.png")
    assert bench_tables.main([]) == 1
    assert "benchmark.md: no <!-- bench-tables:start -->" in capsys.readouterr().out
    assert "| ONNX Runtime fp32 |" in readme.read_text() and page.read_text().endswith("no block here\n")
    assert bench_tables.main(["--check"]) == 1
