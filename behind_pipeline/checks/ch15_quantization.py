"""Checkers for the exercises of chapter 15 (quantization): asymmetric int8 per row, an int8 matmul, the NF4 levels.

Test weights are not square (so a scale over the wrong axis has the wrong shape or the wrong values), their rows
span ranges from 0.01 to 30 (so one scale per tensor cannot pass for one per row), some rows are all positive
or all negative (so a range that forgets to include 0 shows), and one case has a row of zeros in each exercise (its
range is [0, 0], so a scale of 0 gives 0 / 0 = NaN; the int8 matmul's checker watches for that NaN inside the
learner's function, where a cast to int32 and the 0 scale would otherwise hide it).
"""

import torch
from torch.overrides import TorchFunctionMode

from behind_pipeline.checks._core import CheckReport
from behind_pipeline.quantize import nf4_levels

# --- Exercise 1: asymmetric int8, one scale and zero point per output row -----------------------------------------

QMIN, QMAX = 0, 255


def asymmetric_rows_reference(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q (out, in) in [0, 255], scale (out, 1), zero point (out, 1), integers) for each output row."""
    low = weight.amin(dim=1, keepdim=True).clamp(max=0.0)
    high = weight.amax(dim=1, keepdim=True).clamp(min=0.0)
    scale = (high - low) / (QMAX - QMIN)
    scale = scale.where(scale > 0, torch.ones_like(scale))
    zero_point = torch.clamp(torch.round(QMIN - low / scale), QMIN, QMAX)
    q = torch.clamp(torch.round(weight / scale) + zero_point, QMIN, QMAX)
    return q, scale, zero_point


def test_weight(out_features: int, in_features: int, seed: int, zero_row: int | None = None) -> torch.Tensor:
    """Rows of very different ranges; row 1 all positive, row 2 all negative, row 0 with one large outlier; row
    ``zero_row`` (when given) all zeros."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator, dtype=torch.float64).float()
    weight *= torch.logspace(-2, 1.5, out_features)[:, None]  # row ranges from 0.01 to ~30
    weight[0, 0] = 25.0
    weight[1] = weight[1].abs() + 0.5
    weight[2] = -weight[2].abs() - 0.25
    if zero_row is not None:
        weight[zero_row] = 0.0
    return weight


# (rows, inputs, the all-zero row or None, what the case exposes)
ASYMMETRIC_CASES = [(6, 20, None, "6 rows x 20 inputs"), (24, 7, None, "24 rows x 7 inputs"),
                    (9, 9, None, "a square 9 x 9 weight"), (5, 12, 3, "5 rows x 12 inputs, row 3 all zeros")]


def _as_column(report: CheckReport, value, name: str, rows: int, description: str) -> torch.Tensor | None:
    tensor = report.tensor(value, name)
    if tensor is None:
        return None
    if tuple(tensor.shape) in ((rows,), (rows, 1)):
        return tensor.reshape(rows, 1)
    hint = " (one per input column? take the max and min over dim=1, the inputs of each row)" if (
        tensor.numel() != rows) else ""
    report.fail(f"{description}: {name} has shape {tuple(tensor.shape)}, expected ({rows}, 1), one per output "
                f"row{hint}")
    return None


def check_quantize_asymmetric_rows(quantize_asymmetric_rows) -> CheckReport:
    """``quantize_asymmetric_rows(weight)`` -> (q, scale, zero_point), one scale and integer zero point per row."""
    report = CheckReport("Asymmetric int8 per output row")
    for seed, (rows, cols, zero_row, description) in enumerate(ASYMMETRIC_CASES):
        weight = test_weight(rows, cols, seed, zero_row)
        before = weight.clone()
        result = report.call(quantize_asymmetric_rows, weight, name="quantize_asymmetric_rows")
        if result is Ellipsis:
            return report
        if not isinstance(result, tuple | list) or len(result) != 3:
            report.fail(f"{description}: return a tuple (q, scale, zero_point), got {type(result).__name__}")
            return report
        if not torch.equal(weight, before):
            report.fail(f"{description}: the function changed the weight it was given; leave it unchanged")
            return report
        q_ref, scale_ref, zero_ref = (t.double() for t in asymmetric_rows_reference(weight))
        q = report.tensor(result[0], "q", shape=(rows, cols))
        scale = _as_column(report, result[1], "scale", rows, description)
        zero_point = _as_column(report, result[2], "zero_point", rows, description)
        if q is None or scale is None or zero_point is None:
            return report
        if zero_row is not None:
            # A row of zeros may have any positive scale (its q are all z = 0); compare the others with the reference.
            row_scale = scale[zero_row, 0].item()
            if not (torch.isfinite(scale[zero_row]).all() and row_scale > 0 and zero_point[zero_row, 0] == 0
                    and bool((q[zero_row] == 0).all())):
                report.fail(f"{description}: row {zero_row} is all zeros, so its range is [0, 0] and (max - min) / "
                            f"255 is 0 (got scale {row_scale:.3g}, zero point {zero_point[zero_row, 0]:.3g}): give "
                            "such a row scale 1 (its zero point and all its q are then 0)")
                return report
            scale_ref[zero_row] = scale[zero_row]
        if not torch.equal(zero_point, torch.round(zero_point)):
            report.fail(f"{description}: the zero points are not integers (e.g. {zero_point.flatten()[0]:.3f}): "
                        "round -min / scale, so that 0.0 is stored exactly by an integer")
            return report
        if not bool(torch.isfinite(scale).all()) or not torch.allclose(scale, scale_ref, rtol=1e-5, atol=0):
            mean_based = (weight.double().abs().mean(dim=1, keepdim=True) / 255)
            hint = ("the scale looks computed from the mean of |w|; it must come from the range: "
                    "(max(w, 0) - min(w, 0)) / 255" if torch.allclose(scale, mean_based, rtol=1e-3) else
                    "expected (max(w, 0) - min(w, 0)) / 255 for each row: max and min over dim=1, with 0 "
                    "inside the range")
            bad = ~torch.isclose(scale, scale_ref, rtol=1e-5, atol=0)
            row = int(bad.nonzero()[0, 0]) if bool(bad.any()) else 0
            report.fail(f"{description}: scale of row {row} is {scale[row, 0]:.5g}, expected {scale_ref[row, 0]:.5g}: "
                        f"{hint}")
            return report
        if not torch.equal(zero_point, zero_ref):
            row = int((zero_point != zero_ref).nonzero()[0, 0])
            report.fail(f"{description}: zero point of row {row} is {zero_point[row, 0]:.0f}, expected "
                        f"{zero_ref[row, 0]:.0f}: z = round(-min(w, 0) / scale), the integer standing for 0.0 "
                        "(an all-positive row has z = 0, an all-negative one z = 255)")
            return report
        if not torch.equal(q, torch.round(q)) or q.min() < QMIN or q.max() > QMAX:
            report.fail(f"{description}: q must hold integers in [0, 255], got values from {q.min():.3g} to "
                        f"{q.max():.3g}")
            return report
        # float32 and float64 may round a value lying at k + 0.5 differently: allow a few values off by one
        wrong = int(((q - q_ref).abs() > 1).sum()) + max(0, int((q != q_ref).sum()) - q.numel() // 100)
        if wrong:
            report.fail(f"{description}: {wrong} of {q.numel()} values of q differ from round(w / scale) + z: "
                        "divide by the scale first, then round, add the zero point, clamp to [0, 255]")
            return report
        error = ((q - zero_point) * scale - weight.double()).abs()
        report.expect(bool((error <= scale / 2 + 1e-6).all()),
                      f"{description}: scales, integer zero points and q right; error within half a step",
                      f"{description}: some dequantized values are off by more than half a step")
    return report


# --- Exercise 2: an int8 matmul with a scale per row of both operands -----------------------------------------------


def int8_matmul_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per row of ``x`` (per token) and per row of ``weight``, int32 sum, outer-product rescale."""
    def rows(t):
        absmax = t.abs().amax(dim=1, keepdim=True)
        scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
        return torch.clamp(torch.round(t / scale), -127, 127).to(torch.int32), scale

    x_int, x_scale = rows(x.float())  # (tokens, in), (tokens, 1)
    w_int, w_scale = rows(weight.float())  # (out, in), (out, 1)
    return (x_int @ w_int.T).double() * (x_scale.double() * w_scale.double().T)  # (tokens, out)


MATMUL_CASES = [(5, 48, 7, "5 tokens x 48 inputs -> 7 outputs"), (3, 300, 2, "3 tokens x 300 inputs -> 2 outputs"),
                (4, 16, 16, "4 tokens x 16 inputs -> 16 outputs, a row of zeros in x and one in W")]


def matmul_inputs(tokens: int, d_in: int, d_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_in, generator=generator) * torch.logspace(-1, 1, tokens)[:, None]  # (tokens, in)
    x[:, 0] *= 20  # an outlier feature, as activations have
    weight = torch.randn(d_out, d_in, generator=generator) * torch.logspace(-2, 0, d_out)[:, None]  # (out, in)
    if d_in == d_out:
        x[1] = 0.0  # a padding-like row: its scale would be 0
        weight[2] = 0.0  # a pruned output row: the weight's scale needs the same guard
    return x, weight


_INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class NaNCastWatch(TorchFunctionMode):
    """Records the first torch call inside a learner's function that turns a float tensor holding NaN into integers.

    A row of zeros without a guard has scale 0, so ``round(0 / 0)`` is NaN; cast to int32 it becomes an arbitrary
    integer, which the 0 scale then multiplies away: the result is right, the guard missing. Only such a cast is
    recorded, so an answer that computes a NaN it then discards (``torch.where(scale > 0, x / scale, 0)``) is fine.
    """

    def __init__(self):
        super().__init__()
        self.cast: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if self.cast is None and isinstance(result, torch.Tensor) and result.dtype in _INTEGERS and any(
                isinstance(a, torch.Tensor) and a.is_floating_point() and bool(torch.isnan(a).any()) for a in args):
            self.cast = getattr(func, "__name__", "a cast")
        return result


def check_int8_matmul(int8_matmul) -> CheckReport:
    """``int8_matmul(x, weight)`` equals the int8 product with per-token and per-output-row scales."""
    report = CheckReport("An int8 matmul with a scale per row")
    for seed, (tokens, d_in, d_out, description) in enumerate(MATMUL_CASES):
        x, weight = matmul_inputs(tokens, d_in, d_out, seed)
        x_before, w_before = x.clone(), weight.clone()
        watch = NaNCastWatch()
        with watch:
            result = report.call(int8_matmul, x, weight, name="int8_matmul")
        if result is Ellipsis:
            return report
        if watch.cast is not None:
            report.fail(f"{description}: a row of zeros has max 0, so its scale is 0 and round(0 / 0) is NaN; your "
                        f"function turned that NaN into integers (`{watch.cast}`), which only the 0 scale hides in "
                        "the result: give a row of zeros scale 1 (its integers are then all 0)")
            return report
        if not torch.equal(x, x_before) or not torch.equal(weight, w_before):
            report.fail(f"{description}: int8_matmul changed its inputs; leave x and weight unchanged")
            return report
        y = report.tensor(result, "the result", shape=(tokens, d_out))
        if y is None:
            return report
        if not bool(torch.isfinite(y).all()):
            report.fail(f"{description}: the result has NaN or inf: a row of zeros has max 0, so its scale would be "
                        "0; use scale 1 there (its integers are all 0 anyway)")
            return report
        expected = int8_matmul_reference(x, weight)
        tolerance = 1e-4 * expected.abs().max().item() + 1e-6
        if (y - expected).abs().max().item() <= tolerance:
            report.ok(f"{description}: equals the int8 product (max abs diff {(y - expected).abs().max():.1e})")
            continue
        fp32 = (x.double() @ weight.double().T)
        per_tensor = _per_tensor_matmul(x, weight)
        if (y - fp32).abs().max().item() <= tolerance:
            hint = "it equals the fp32 product x @ W.T: quantize both operands to int8 first"
        elif (y - per_tensor).abs().max().item() <= tolerance:
            hint = "it equals the product with one scale per tensor: take one scale per row of x and of W"
        else:
            hint = ("quantize each row of x and each row of W with max|row| / 127, multiply the integers "
                    "(int32: int8 sums overflow), then multiply entry (i, j) by x_scale[i] * w_scale[j]")
        report.fail(f"{description}: max abs diff {(y - expected).abs().max():.3g} from the int8 product: {hint}")
        return report
    return report


def _per_tensor_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    x_scale, w_scale = x.abs().max() / 127, weight.abs().max() / 127
    x_int = torch.clamp(torch.round(x / x_scale), -127, 127).to(torch.int32)
    w_int = torch.clamp(torch.round(weight / w_scale), -127, 127).to(torch.int32)
    return (x_int @ w_int.T).double() * (x_scale * w_scale).double()


# --- Exercise 3: the 16 NF4 levels from the normal distribution -----------------------------------------------------


def nf4_levels_reference(offset: float) -> torch.Tensor:
    """QLoRA's construction in float64: 8 positive and 7 negative normal quantiles, 0, normalised to [-1, 1]."""
    normal = torch.distributions.Normal(0.0, 1.0)
    positive = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    raw = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return raw / raw.max()


NF4_OFFSETS = [(0.9677083, "bitsandbytes' offset 0.9677083"), (0.99, "another offset, 0.99")]


def check_nf4_levels(nf4_levels_from_normal) -> CheckReport:
    """``nf4_levels_from_normal(offset)``: 16 NF4 values from normal quantiles (bitsandbytes' table at its offset)."""
    report = CheckReport("The NF4 levels from the normal distribution")
    for offset, description in NF4_OFFSETS:
        result = report.call(nf4_levels_from_normal, offset, name="nf4_levels_from_normal")
        if result is Ellipsis:
            return report
        expected = nf4_levels().double() if offset == NF4_OFFSETS[0][0] else nf4_levels_reference(offset)
        if not _levels_right(report, result, expected, description):
            return report
    return report


def _levels_right(report: CheckReport, levels, expected: torch.Tensor, description: str) -> bool:
    values = report.tensor(levels, "the levels")
    if values is None:
        return False
    values = values.flatten()
    if values.numel() != 16:
        report.fail(f"{description}: {values.numel()} levels; 4 bits index 16 (7 negative, 0, 8 positive)")
        return False
    if not bool(torch.isfinite(values).all()):
        report.fail(f"{description}: some levels are NaN or infinite: the quantile at probability 1 is infinite, "
                    "start at the offset")
        return False
    if not bool((values[1:] > values[:-1]).all()):
        report.fail(f"{description}: the levels are not sorted in increasing order (index i is the i-th smallest)")
        return False
    if abs(values.max().item() - 1) > 1e-6 or values.min().item() < -1 - 1e-6:
        report.fail(f"{description}: the levels span [{values.min():.4f}, {values.max():.4f}]: normalise them to "
                    "[-1, 1] by dividing by the largest, as absmax scaling puts every block in [-1, 1]")
        return False
    if int((values == 0).sum()) != 1 or int((values < 0).sum()) != 7:
        report.fail(f"{description}: {int((values < 0).sum())} negative, {int((values == 0).sum())} zero, "
                    f"{int((values > 0).sum())} positive: NF4 has 7 negative levels, 0, and 8 positive")
        return False
    diff = (values - expected).abs().max().item()
    if diff > 1e-5:
        evenly = torch.linspace(-1, 1, 16, dtype=torch.float64)
        hint = ("they are evenly spaced; NF4 levels are quantiles of N(0, 1)" if torch.allclose(values, evenly)
                else "positive: the quantiles at 9 probabilities from the offset down to 0.5, dropping 0.5; "
                "negative: minus those at 8 probabilities from the offset to 0.5, dropping 0.5")
        report.fail(f"{description}: max abs diff {diff:.3g} from the expected levels: {hint}")
        return False
    report.ok(f"{description}: 16 sorted levels in [-1, 1] with one 0, equal to the expected ones "
              f"(max abs diff {diff:.1e})")
    return True
