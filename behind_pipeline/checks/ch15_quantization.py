"""Checkers for the exercises of chapter 15 (quantization): asymmetric int8 per row, an int8 matmul, the NF4 levels.

Test weights are not square (so a scale over the wrong axis has the wrong shape or the wrong values), their rows
span ranges from 0.01 to 30 (so one scale per tensor cannot pass for one per row), some rows are all positive
or all negative (so a range that forgets to include 0 shows), and one case has a row of zeros in each exercise (its
range is [0, 0], so a scale of 0 gives 0 / 0 = NaN; the int8 matmul's checker watches for that NaN inside the
learner's function, where a cast to int32 and the 0 scale would otherwise hide it, and for NumPy's warning when the
cast is NumPy's). Row 4 of each asymmetric weight spans [-3, 3]: its zero point, 127.5, lies half-way between two
integers, so rounding it up and rounding 127.5 at the row's max up too gives 256, which only the clamp keeps in
[0, 255] (either neighbour of such a zero point is accepted). One matmul case has rows of one sign whose integer
sums pass int16's 32,767, so a product in int8 or int16 wraps around.
"""

import warnings

import torch
from torch.overrides import TorchFunctionMode

from behind_pipeline.checks._core import CheckReport, named_mistakes
from behind_pipeline.quantize import nf4_levels

# --- Exercise 1: asymmetric int8, one scale and zero point per output row -----------------------------------------

QMIN, QMAX = 0, 255
TIE_ROW, TIE_MAX = 4, 3.0  # row 4 spans [-3, 3]: -min / scale = 3 / (6 / 255) = 127.5 exactly, in float32 and 64


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
    """Rows of very different ranges; row 1 all positive, row 2 all negative, row 0 with one large outlier, row 4
    (when there is one) spanning [-3, 3], its zero point 127.5 half-way between two integers; row ``zero_row``
    (when given) all zeros."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator, dtype=torch.float64).float()
    weight *= torch.logspace(-2, 1.5, out_features)[:, None]  # row ranges from 0.01 to ~30
    weight[0, 0] = 25.0
    weight[1] = weight[1].abs() + 0.5
    weight[2] = -weight[2].abs() - 0.25
    if out_features > TIE_ROW and zero_row != TIE_ROW:
        inside = torch.rand(in_features, generator=generator, dtype=torch.float64).float() * 5.8 - 2.9
        weight[TIE_ROW] = inside  # in (-2.9, 2.9)
        weight[TIE_ROW, 0], weight[TIE_ROW, -1] = -TIE_MAX, TIE_MAX
    if zero_row is not None:
        weight[zero_row] = 0.0
    return weight


# (rows, inputs, the all-zero row or None, what the case exposes)
ASYMMETRIC_CASES = [(6, 20, None, "6 rows x 20 inputs"), (24, 7, None, "24 rows x 7 inputs"),
                    (9, 9, None, "a square 9 x 9 weight"), (5, 12, 3, "5 rows x 12 inputs, row 3 all zeros")]


def _as_column(report: CheckReport, value, name: str, rows: int, columns: int, description: str
               ) -> torch.Tensor | None:
    tensor = report.tensor(value, name)
    if tensor is None:
        return None
    if tuple(tensor.shape) in ((rows,), (rows, 1)):
        return tensor.reshape(rows, 1)
    if tensor.numel() == 1:
        hint = (" (one for the whole tensor? the exercise asks for one per output row: min and max over dim=1, "
                "keepdim=True)")
    elif tensor.numel() != rows:
        hint = (" (one per input column? take the max and min over dim=1, the inputs of each row)"
                if columns in tensor.shape else "")
    else:
        hint = ""
    report.fail(f"{description}: {name} has shape {tuple(tensor.shape)}, expected ({rows}, 1), one per output "
                f"row{hint}")
    return None


def _scale_hint(weight: torch.Tensor, scale: torch.Tensor, scale_ref: torch.Tensor) -> str:
    """What a wrong scale looks like it was computed from, or the rule."""
    w = weight.double()
    nonzero = (w != 0).any(dim=1, keepdim=True)  # a row of zeros may have any scale

    def like(candidate: torch.Tensor) -> bool:
        return bool(torch.isclose(scale, candidate, rtol=1e-3, atol=0)[nonzero].all())

    whole = (w.amax().clamp(min=0) - w.amin().clamp(max=0)) / 255
    if like(w.abs().mean(dim=1, keepdim=True) / 255):
        return ("the scale looks computed from the mean of |w|; it must come from the range: "
                "(max(w, 0) - min(w, 0)) / 255")
    if like(2 * w.abs().amax(dim=1, keepdim=True) / 255):
        return ("the scale is 2 max|w| / 255, a symmetric range [-max|w|, max|w|]; asymmetric takes the row's min "
                "and max separately: (max(w, 0) - min(w, 0)) / 255")
    if like(scale_ref * 255 / 256):
        return "the range is divided by 256; the integers 0 to 255 have 255 steps between them: divide by 255"
    if like(whole.expand_as(scale)):
        return ("every row has the scale of the whole tensor (one scale per tensor): take the max and min of each "
                "row, over dim=1")
    return ("expected (max(w, 0) - min(w, 0)) / 255 for each row: max and min over dim=1, with 0 inside the "
            "range")


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
        scale = _as_column(report, result[1], "scale", rows, cols, description)
        zero_point = _as_column(report, result[2], "zero_point", rows, cols, description)
        if q is None or scale is None or zero_point is None:
            return report
        if zero_row is not None:
            # A row of zeros may have any positive scale (its q are all z = 0); compare the others with the reference.
            row_scale = scale[zero_row, 0].item()
            if not (torch.isfinite(scale[zero_row]).all() and row_scale > 0):
                report.fail(f"{description}: row {zero_row} is all zeros, so its range is [0, 0] and (max - min) / "
                            f"255 is 0 (got scale {row_scale:.3g}): give such a row scale 1 (its zero point and all "
                            "its q are then 0)")
                return report
            if not (zero_point[zero_row, 0] == 0 and bool((q[zero_row] == 0).all())):
                report.fail(f"{description}: row {zero_row} is all zeros: its zero point must be 0 and all its q 0, "
                            f"since z = round(-min(w, 0) / scale) = 0 (got zero point {zero_point[zero_row, 0]:.3g}, "
                            f"q from {q[zero_row].min():.3g} to {q[zero_row].max():.3g})")
                return report
            scale_ref[zero_row] = scale[zero_row]
        if not torch.equal(zero_point, torch.round(zero_point)):
            report.fail(f"{description}: the zero points are not integers (e.g. {zero_point.flatten()[0]:.3f}): "
                        "round -min / scale, so that 0.0 is stored exactly by an integer")
            return report
        if not bool(torch.isfinite(scale).all()) or not torch.allclose(scale, scale_ref, rtol=1e-5, atol=0):
            hint = _scale_hint(weight, scale, scale_ref)
            bad = ~torch.isclose(scale, scale_ref, rtol=1e-5, atol=0)
            row = int(bad.nonzero()[0, 0]) if bool(bad.any()) else 0
            report.fail(f"{description}: scale of row {row} is {scale[row, 0]:.5g}, expected {scale_ref[row, 0]:.5g}: "
                        f"{hint}")
            return report
        # -min / scale in float64: a zero point half-way between two integers (row 4) may be rounded either way
        low = weight.double().amin(dim=1, keepdim=True).clamp(max=0.0)
        span = weight.double().amax(dim=1, keepdim=True).clamp(min=0.0) - low
        exact = torch.where(span > 0, -low * 255 / span.where(span > 0, torch.ones_like(span)), 0.0)
        far = (zero_point - exact).abs() > 0.5 + 1e-4
        if bool(far.any()):
            row = int(far.nonzero()[0, 0])
            if bool(zero_point.min() < 0):
                hint = (": a negative zero point stands for signed int8 ([-128, 127]); this exercise's q are "
                        "unsigned, in [0, 255]")
            elif zero_point[row, 0] == torch.floor(exact[row, 0]):
                hint = ": floor (or int()) truncates; round to the nearest integer"
            else:
                hint = ""
            report.fail(f"{description}: zero point of row {row} is {zero_point[row, 0]:.0f}, expected "
                        f"{zero_ref[row, 0]:.0f}: z = round(-min(w, 0) / scale), the integer standing for 0.0 "
                        f"(an all-positive row has z = 0, an all-negative one z = 255){hint}")
            return report
        if not torch.equal(q, torch.round(q)) or q.min() < QMIN or q.max() > QMAX:
            if q.max() > QMAX and torch.equal(q, torch.round(q)) and q.min() >= QMIN:
                hint = (": clamp to [0, 255] after adding the zero point (row 4's max, 127.5 steps above a zero "
                        "point that rounded up, reaches 256)")
            elif q.min() < QMIN and isinstance(result[0], torch.Tensor) and result[0].dtype == torch.int8:
                hint = (": torch.int8 holds -128 to 127, so q from 128 to 255 wrapped around to negative numbers; "
                        "store them as torch.uint8")
            else:
                hint = ""
            report.fail(f"{description}: q must hold integers in [0, 255], got values from {q.min():.3g} to "
                        f"{q.max():.3g}{hint}")
            return report
        # q from the learner's zero points (either neighbour of a half-way one); float32 and float64 may round a
        # value lying at k + 0.5 differently: allow values there off by one, and a few others
        q_ref = torch.clamp(torch.round(weight / scale_ref.float()) + zero_point.float(), QMIN, QMAX).double()
        quotient = weight.double() / scale_ref
        tie = ((quotient - torch.floor(quotient)) - 0.5).abs() < 3e-3
        wrong = int(((q - q_ref).abs() > 1).sum()) + max(0, int(((q != q_ref) & ~tie).sum()) - q.numel() // 100)
        if wrong:
            truncated = torch.clamp(torch.floor(weight.double() / scale_ref + zero_point), QMIN, QMAX)
            if str(getattr(result[0], "dtype", "")) in ("torch.uint8", "uint8") and bool(
                    (q == 0).logical_and(q_ref == QMAX).any()):
                hint = (": a value reached 256 and wrapped around to 0 in uint8: clamp to [0, 255] before the cast "
                        "(row 4's max lies 127.5 steps above its zero point)")
            elif torch.equal(q, truncated) or torch.equal(q, torch.clamp(torch.floor(quotient) + zero_point, 0, 255)):
                hint = (": q looks truncated (floor, int(), or .to(torch.uint8) on unrounded values); round to the "
                        "nearest integer first")
            else:
                hint = ": divide by the scale first, then round, add the zero point, clamp to [0, 255]"
            report.fail(f"{description}: {wrong} of {q.numel()} values of q differ from round(w / scale) + z{hint}")
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
                (4, 16, 16, "4 tokens x 16 inputs -> 16 outputs, a row of zeros in x and one in W"),
                (2, 256, 3, "2 tokens x 256 inputs -> 3 outputs, positive rows whose integer sums pass 32,767")]


def matmul_inputs(tokens: int, d_in: int, d_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_in, generator=generator) * torch.logspace(-1, 1, tokens)[:, None]  # (tokens, in)
    x[:, 0] *= 20  # an outlier feature, as activations have
    weight = torch.randn(d_out, d_in, generator=generator) * torch.logspace(-2, 0, d_out)[:, None]  # (out, in)
    if d_in == d_out:
        x[1] = 0.0  # a padding-like row: its scale would be 0
        weight[2] = 0.0  # a pruned output row: the weight's scale needs the same guard
    if d_in == 256:  # rows of one sign near their max: sums of 256 products near 127 * 127 wrap in int8 and int16
        x[-1] = 1.0 + torch.rand(d_in, generator=generator)
        weight[-1] = 1.0 + torch.rand(d_in, generator=generator)
    return x, weight


_INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# torch calls that multiply tensors: the int8 product is one of them run on integers (an int dtype, or whole numbers)
_PRODUCTS = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "mv", "dot", "inner", "einsum", "linear",
             "tensordot", "addmm", "baddbmm", "chain_matmul", "multi_dot", "mul", "__mul__", "__rmul__", "multiply"}
_ELEMENTWISE = {"mul", "__mul__", "__rmul__", "multiply"}


def _tensors(values) -> list[torch.Tensor]:
    found = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(_tensors(value))
    return found


def _whole(tensor: torch.Tensor) -> bool:
    if tensor.dtype in _INTEGERS:
        return True
    return bool(tensor.is_floating_point() and torch.equal(tensor, torch.round(tensor)))


class NaNCastWatch(TorchFunctionMode):
    """Records the first torch call inside a learner's function that turns a float tensor holding NaN into integers,
    and whether the learner's products ran on integers.

    A row of zeros without a guard has scale 0, so ``round(0 / 0)`` is NaN; cast to int32 it becomes an arbitrary
    integer, which the 0 scale then multiplies away: the result is right, the guard missing. Only such a cast is
    recorded, so an answer that computes a NaN it then discards (``torch.where(scale > 0, x / scale, 0)``) is fine.
    A product of dequantized floats (``(x_int * x_scale) @ (w_int * w_scale).T``) gives the same numbers as the int8
    product; ``float_product`` names such a call and ``integer_product`` says whether any product had integer
    operands (a NumPy answer shows neither, and passes).
    """

    def __init__(self):
        super().__init__()
        self.cast: str | None = None
        self.float_product: str | None = None
        self.integer_product = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if self.cast is None and isinstance(result, torch.Tensor) and result.dtype in _INTEGERS and any(
                isinstance(a, torch.Tensor) and a.is_floating_point() and bool(torch.isnan(a).any()) for a in args):
            self.cast = name or "a cast"
        if name in _PRODUCTS:
            try:
                operands = [t for t in _tensors(args) if t.numel() > 1]
                if len(operands) >= 2:
                    if all(_whole(t) for t in operands):
                        self.integer_product = True
                    elif name not in _ELEMENTWISE and self.float_product is None and any(
                            t.is_floating_point() for t in operands):
                        self.float_product = name
            except Exception:  # the watch must never break the learner's code (quantized or sparse tensors)
                pass
        return result


def _rows_variant(t: torch.Tensor, per_row: bool = True, divisor: float = 127, low: int = -127,
                  absolute: bool = True, rounding=torch.round) -> tuple[torch.Tensor, torch.Tensor]:
    t = t.float()
    size = (t.abs() if absolute else t).amax(dim=1, keepdim=True) if per_row else t.abs().amax().reshape(1, 1)
    scale = torch.where(size != 0, size / divisor, torch.ones_like(size))
    return torch.clamp(rounding(t / scale), low, 127).to(torch.int64), scale.double()


def _matmul_variant(x, weight, x_kind: dict | None = None, w_kind: dict | None = None, wrap_bits: int | None = None
                    ) -> torch.Tensor:
    (x_int, x_scale), (w_int, w_scale) = _rows_variant(x, **(x_kind or {})), _rows_variant(weight, **(w_kind or {}))
    sums = x_int @ w_int.T
    if wrap_bits is not None:
        half = 2 ** (wrap_bits - 1)
        sums = (sums + half) % (2 * half) - half
    return sums.double() * (x_scale * w_scale.T)


def _largest_sum(x: torch.Tensor, weight: torch.Tensor) -> int:
    return int((_rows_variant(x)[0] @ _rows_variant(weight)[0].T).abs().max())


def _matmul_hint(x, weight, y, result, tolerance) -> str:
    if isinstance(result, torch.Tensor) and result.dtype in (torch.float16, torch.bfloat16):
        name, digits = ("float16", 3) if result.dtype == torch.float16 else ("bfloat16", 2)
        return f"the result is {name}, which keeps about {digits} significant digits: return it as float32 (`.float()`)"
    (x_int, x_scale), (w_int, w_scale) = _rows_variant(x), _rows_variant(weight)
    sums = (x_int @ w_int.T).double()
    variants = {
        "it equals the fp32 product x @ W.T: quantize both operands to int8 first": x.double() @ weight.double().T,
        "it equals the product of the float x with the int8 W (weight-only quantization): quantize each row of x "
        "to int8 too": x.double() @ (w_int.double() * w_scale).T,
        "it equals the product of the int8 x with the float W: quantize each row of W to int8 too":
            x_int.double() * x_scale @ weight.double().T,
        "it equals the integer sums x_int @ w_int.T, never rescaled: multiply entry (i, j) by "
        "x_scale[i] * w_scale[j]": sums,
        "the integer sums are rescaled by x's scales only: multiply entry (i, j) by "
        "x_scale[i] * w_scale[j]": sums * x_scale,
        "the integer sums are rescaled by W's scales only: multiply entry (i, j) by "
        "x_scale[i] * w_scale[j]": sums * w_scale.T,
        "it equals the product with scale max|row| / 255 (the asymmetric exercise's 255 steps): symmetric int8 "
        "puts max|row| at 127, so scale = max|row| / 127": _matmul_variant(x, weight, {"divisor": 255},
                                                                           {"divisor": 255}),
        "the integer sums were computed in float16, which holds whole numbers exactly only up to 2,048: multiply "
        "the integers as torch.int32": (x_int.half() @ w_int.half().T).double() * (x_scale * w_scale.T),
        "it equals the product with one scale per tensor: take one scale per row of x and of W":
            _per_tensor_matmul(x, weight),
        "it equals the product with one scale for all of x (as the chapter's dynamic Linear) and one per row of "
        "W: give each token, each row of x, its own scale": _matmul_variant(x, weight, x_kind={"per_row": False}),
        "it equals the product with one scale for all of W: give each output row of W its own scale":
            _matmul_variant(x, weight, w_kind={"per_row": False}),
        "the integers look truncated toward 0 (`.to(torch.int32)` without torch.round, or floor): round first":
            _matmul_variant(x, weight, {"rounding": torch.trunc}, {"rounding": torch.trunc}),
        "it equals the product with scales from max(row) instead of max(|row|): take the absolute value first":
            _matmul_variant(x, weight, {"absolute": False}, {"absolute": False}),
        "it equals the product with scale max|row| / 128 and integers in [-128, 127]: symmetric int8 uses "
        "max|row| / 127 and [-127, 127], so that -max and max are both stored":
            _matmul_variant(x, weight, {"divisor": 128, "low": -128}, {"divisor": 128, "low": -128}),
        f"the integer sums wrapped around at int16's 32,767 (these reach {_largest_sum(x, weight):,}): multiply "
        "the integers as torch.int32": _matmul_variant(x, weight, wrap_bits=16),
        "the integer sums wrapped around at int8's 127: multiply the integers as torch.int32":
            _matmul_variant(x, weight, wrap_bits=8),
    }
    named = named_mistakes(y, variants, lambda answer, candidate: (answer - candidate).abs().max().item() <= tolerance)
    return named[0] if named else ("quantize each row of x and each row of W with max|row| / 127, multiply the "
                                   "integers (int32: int8 sums overflow), then multiply entry (i, j) by x_scale[i] * "
                                   "w_scale[j]")


def check_int8_matmul(int8_matmul) -> CheckReport:
    """``int8_matmul(x, weight)`` equals the int8 product with per-token and per-output-row scales."""
    report = CheckReport("An int8 matmul with a scale per row")
    for seed, (tokens, d_in, d_out, description) in enumerate(MATMUL_CASES):
        x, weight = matmul_inputs(tokens, d_in, d_out, seed)
        x_before, w_before = x.clone(), weight.clone()
        watch = NaNCastWatch()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with watch:
                result = report.call(int8_matmul, x, weight, name="int8_matmul")
        numpy_cast = False
        for warning in caught:  # NumPy's cast of a NaN to integers warns; show every other warning as it was
            if "invalid value encountered in cast" in str(warning.message):
                numpy_cast = True
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if result is Ellipsis:
            return report
        if watch.cast is not None or numpy_cast:
            cast = f"`{watch.cast}`" if watch.cast is not None else "NumPy's `astype`"
            report.fail(f"{description}: a row of zeros has max 0, so its scale is 0 and round(0 / 0) is NaN; your "
                        f"function turned that NaN into integers ({cast}), which only the 0 scale hides in "
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
        if (y - expected).abs().max().item() > tolerance:
            report.fail(f"{description}: max abs diff {(y - expected).abs().max():.3g} from the int8 product: "
                        f"{_matmul_hint(x, weight, y, result, tolerance)}")
            return report
        if watch.float_product is not None and not watch.integer_product:
            report.fail(f"{description}: the numbers are right, but no product ran on the integers: "
                        f"`{watch.float_product}` multiplied dequantized floats (q * scale), which is the fp32 "
                        "product of rounded values, not an int8 matmul; multiply x_int @ w_int.T as torch.int32, "
                        "then rescale each entry (i, j) once by x_scale[i] * w_scale[j]")
            return report
        report.ok(f"{description}: equals the int8 product (max abs diff {(y - expected).abs().max():.1e})")
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


def _one_grid_for_both_sides(offset: float) -> torch.Tensor:
    """A typical wrong answer: the negative side on the positive side's 8 steps, the one nearest 0.5 dropped."""
    normal = torch.distributions.Normal(0.0, 1.0)
    positive = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8, outermost first
    raw = torch.cat([-positive[:7], torch.zeros(1, dtype=torch.float64), positive]).sort().values
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
        if not _levels_right(report, result, expected, description, offset):
            return report
    return report


def _levels_right(report: CheckReport, levels, expected: torch.Tensor, description: str, offset: float
                  ) -> bool:
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
    if abs(values.min().item() + 1) > 1e-6:
        report.fail(f"{description}: the most negative level is {values.min():.4f}, not -1: the negative side, like "
                    "the positive one, runs out to probability `offset` (with 7 levels over the same span of "
                    "probabilities, its steps are wider than the positive side's 8)")
        return False
    diff = (values - expected).abs().max().item()
    if diff > 1e-5:
        evenly = torch.linspace(-1, 1, 16, dtype=torch.float64)
        if isinstance(levels, torch.Tensor) and levels.dtype in (torch.float16, torch.bfloat16):
            hint = (f"the levels are {str(levels.dtype).removeprefix('torch.')}, which keeps about 3 significant "
                    "digits; return them in float32 or float64")
        elif torch.allclose(values, evenly):
            hint = "they are evenly spaced; NF4 levels are quantiles of N(0, 1)"
        elif description != NF4_OFFSETS[0][1] and (values - nf4_levels().double()).abs().max().item() <= 1e-5:
            hint = ("these are the levels at offset 0.9677083 whatever the offset: compute them from the function's "
                    "`offset` argument")
        elif torch.allclose(values, torch.cat([torch.linspace(-1, 0, 8, dtype=torch.float64),
                                               torch.linspace(0, 1, 9, dtype=torch.float64)[1:]])):
            hint = ("the levels are evenly spaced values on each side of 0; it is their probabilities that are "
                    "evenly spaced: each level is a quantile of N(0, 1), scaled so that the outermost is -1 or 1")
        elif (values - _one_grid_for_both_sides(offset)).abs().max().item() <= 1e-5:
            hint = ("the negative levels sit on the positive side's probabilities (steps of (offset - 0.5) / 8, the "
                    "one nearest 0.5 left out); with 7 negative levels from 0.5 to the offset, each side has its own "
                    "equal steps: (offset - 0.5) / 7 on the negative side")
        else:
            hint = ("on each side of 0 the probabilities of the levels are evenly spaced from 0.5 (the level 0) to "
                    "the offset (the level -1 or 1): 8 equal steps on the positive side, 7 on the negative")
        report.fail(f"{description}: max abs diff {diff:.3g} from the expected levels: {hint}")
        return False
    report.ok(f"{description}: 16 sorted levels in [-1, 1] with one 0, equal to the expected ones "
              f"(max abs diff {diff:.1e})")
    return True
