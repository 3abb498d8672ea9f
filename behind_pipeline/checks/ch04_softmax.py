"""Checkers for the exercises of chapter 4 (softmax, log-sum-exp, ECE, temperature)."""

import torch

from behind_pipeline.checks._core import CheckReport, allclose, as_tensor
from behind_pipeline.runtime import rounded

# Logits big enough that exp overflows (1000) or underflows (-1000) in float32 and float64: the naive formula
# gives nan on them, the stable one the exact answer.
SMALL_LOGITS = torch.tensor([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0]])
LARGE_LOGITS = torch.tensor([[1000.0, 1001.0], [-1000.0, -1001.0]])


def _as_tensor(report: CheckReport, value, name: str):
    """The learner's result as a float64 tensor, or None (with a FIX line) if it cannot be one."""
    tensor = as_tensor(value)
    if tensor is None:  # a list of strings, a dict...: say so instead of crashing the notebook
        report.fail(f"{name} should be a tensor; got {type(value).__name__}")
    return tensor


def _close(report: CheckReport, value, expected: torch.Tensor, name: str, ok: str, atol: float = 1e-5) -> bool:
    """Shape, finiteness and values of a tensor result against the expected one."""
    tensor = _as_tensor(report, value, name)
    if tensor is None:
        return False
    expected = expected.double()
    if tensor.shape != expected.shape:
        report.fail(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}")
        return False
    if not torch.isfinite(tensor).all():
        report.fail(f"{name} contains nan or inf: {rounded(tensor.tolist())}; expected {rounded(expected.tolist())}")
        return False
    diff = (tensor - expected).abs().max().item()
    return report.expect(diff < atol, ok, f"{name} is off by up to {diff:.1e}: got {rounded(tensor.tolist())}, "
                                          f"expected {rounded(expected.tolist())}")


def check_stable_softmax(stable_softmax) -> CheckReport:
    """``stable_softmax(logits, dim=-1)``: equal to ``torch.softmax``, finite on huge logits, input untouched."""
    report = CheckReport("Stable softmax")
    small = SMALL_LOGITS.clone()
    result = report.call(stable_softmax, small)
    if result is Ellipsis:
        return report
    _close(report, result, torch.softmax(SMALL_LOGITS, dim=-1), "stable_softmax(small logits)",
           "matches torch.softmax on small logits, rows sum to 1")
    report.expect(torch.equal(small, SMALL_LOGITS), "leaves its input unchanged",
                  "changed the logits it was given (an in-place `-=`?): compute a new tensor instead")
    large = report.call(stable_softmax, LARGE_LOGITS.clone())
    if large is not Ellipsis:
        _close(report, large, torch.softmax(LARGE_LOGITS, dim=-1), "stable_softmax([[1000, 1001], [-1000, -1001]])",
               "finite and right on logits of +-1000 (exp alone would overflow): the max is subtracted")
    columns = report.call(stable_softmax, SMALL_LOGITS.clone(), dim=0)
    if columns is not Ellipsis:
        _close(report, columns, torch.softmax(SMALL_LOGITS, dim=0), "stable_softmax(logits, dim=0)",
               "respects the `dim` argument")
    return report


def check_log_sum_exp(log_sum_exp) -> CheckReport:
    """``log_sum_exp(logits, dim=-1)``: equal to ``torch.logsumexp`` (dimension removed), finite on huge logits."""
    report = CheckReport("Log-sum-exp")
    result = report.call(log_sum_exp, SMALL_LOGITS.clone())
    if result is Ellipsis:
        return report
    _close(report, result, torch.logsumexp(SMALL_LOGITS, dim=-1), "log_sum_exp(small logits)",
           "matches torch.logsumexp on small logits (one value per row)")
    large = report.call(log_sum_exp, LARGE_LOGITS.clone())
    if large is not Ellipsis:
        _close(report, large, torch.logsumexp(LARGE_LOGITS, dim=-1), "log_sum_exp([[1000, 1001], [-1000, -1001]])",
               "finite and right on logits of +-1000: the max is taken out before exp", atol=1e-4)
    columns = report.call(log_sum_exp, SMALL_LOGITS.clone(), dim=0)
    if columns is not Ellipsis:
        _close(report, columns, torch.logsumexp(SMALL_LOGITS, dim=0), "log_sum_exp(logits, dim=0)",
               "respects the `dim` argument")
    return report


def reference_ece_from_bins(confidences: torch.Tensor, correct: torch.Tensor, bin_ids: torch.Tensor) -> float:
    """The ECE once each prediction's bin is known: gaps weighted by the share of predictions in their bin."""
    total = len(confidences)
    ece = 0.0
    for b in bin_ids.unique():
        in_bin = bin_ids == b
        gap = correct[in_bin].double().mean() - confidences[in_bin].double().mean()
        ece += in_bin.sum().item() / total * abs(gap.item())
    return ece


def _ece_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Bins of very different sizes (so an unweighted mean of the gaps is visibly wrong), gaps of both signs (so
    |mean accuracy - mean confidence| over all predictions is wrong too), and a perfectly calibrated case."""
    generator = torch.Generator().manual_seed(4)
    confidences = 0.5 + 0.5 * torch.rand(200, generator=generator, dtype=torch.float64)
    # Over-confident on purpose: right with probability confidence - 0.1.
    correct = (torch.rand(200, generator=generator, dtype=torch.float64) < confidences - 0.1).double()
    bin_ids = (torch.ceil(confidences * 10).long() - 1).clamp(0, 9)
    crowded = torch.cat([torch.full((90,), 0.95), torch.full((10,), 0.55)]).double()
    # Over-confident in the crowded bin, under-confident in the small one: the gaps must not cancel out.
    crowded_correct = torch.cat([torch.ones(81), torch.zeros(9), torch.ones(9), torch.zeros(1)]).double()
    crowded_bins = torch.cat([torch.full((90,), 9), torch.full((10,), 5)])
    perfect = torch.tensor([1.0, 1.0, 0.75, 0.75, 0.75, 0.75], dtype=torch.float64)
    perfect_correct = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    perfect_bins = torch.tensor([9, 9, 7, 7, 7, 7])
    return [("200 random predictions in 10 bins", confidences, correct, bin_ids),
            ("one crowded bin (90) and one small bin (10)", crowded, crowded_correct, crowded_bins),
            ("bins whose accuracy equals their confidence", perfect, perfect_correct, perfect_bins)]


def check_ece(ece_from_bins) -> CheckReport:
    """``ece_from_bins(confidences, correct, bin_ids) -> float``: the bin-size-weighted mean of |acc - conf|."""
    report = CheckReport("Expected calibration error")
    for description, confidences, correct, bin_ids in _ece_cases():
        value = report.call(ece_from_bins, confidences.clone(), correct.clone(), bin_ids.clone())
        if value is Ellipsis:
            return report
        try:
            value = float(value)
        except (TypeError, ValueError):
            report.fail(f"ece_from_bins should return one number; got {type(value).__name__}")
            return report
        expected = reference_ece_from_bins(confidences, correct, bin_ids)
        if not report.expect(abs(value - expected) < 1e-6, f"{description}: {expected:.4f}",
                             f"{description}: got {value:.4f}, expected {expected:.4f}"):
            unweighted = torch.stack([(correct[bin_ids == b].mean() - confidences[bin_ids == b].mean()).abs()
                                      for b in bin_ids.unique()]).mean().item()
            if abs(value - unweighted) < 1e-6:
                report.fail("that is the plain mean of the bins' gaps: weight each gap by (bin size / total)")
            return report
    return report


def check_softmax_with_temperature(softmax_with_temperature) -> CheckReport:
    """``softmax_with_temperature(logits, temperature)``: softmax of logits / T; T > 1 flattens, T < 1 sharpens."""
    report = CheckReport("Softmax with temperature")
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    for temperature in (1.0, 2.0, 0.5):
        result = report.call(softmax_with_temperature, logits.clone(), temperature)
        if result is Ellipsis:
            return report
        if not _close(report, result, torch.softmax(logits / temperature, dim=-1), f"T={temperature}",
                      f"T={temperature}: equals torch.softmax(logits / {temperature})"):
            if allclose(result, torch.softmax(logits * temperature, dim=-1)):
                report.fail("that is softmax(logits * T): divide the logits by the temperature")
            return report
    hot = report.call(softmax_with_temperature, logits.clone(), 1000.0)
    if hot is not Ellipsis and (tensor := _as_tensor(report, hot, "T=1000")) is not None:
        report.expect(torch.allclose(tensor, torch.full_like(tensor, 1 / 3), atol=1e-2),
                      "T=1000: close to uniform (1/3 each)", "a huge temperature should give almost uniform probs")
    large = report.call(softmax_with_temperature, LARGE_LOGITS.clone(), 0.5)
    if large is not Ellipsis:
        _close(report, large, torch.softmax(LARGE_LOGITS / 0.5, dim=-1), "logits of +-1000 at T=0.5",
               "stays finite on logits of +-1000 (use a stable softmax)")
    return report
