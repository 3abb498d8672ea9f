"""Softmax written by hand: logits to probabilities, stable for any logit size (chapter 4)."""

import math

import torch


def exp_limits(dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Where ``exp(x)`` leaves the normal range of ``dtype``, from the format's own constants.

    Above ``overflow`` exp is inf; below ``subnormal`` it is a subnormal number with fewer significant bits; below
    ``zero`` it rounds to 0 (it is under half the smallest subnormal). For float32: 88.72, -87.34, -103.97.
    """
    info = torch.finfo(dtype)
    # Smallest subnormal = tiny * eps (2**-149 in float32); anything under half of it rounds to 0. In logs, because
    # half of float64's smallest subnormal is itself 0 as a Python float.
    return {"overflow": math.log(info.max), "subnormal": math.log(info.tiny),
            "zero": math.log(info.tiny) + math.log(info.eps) - math.log(2)}


def naive_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x) / sum(exp(x)), straight from the formula: right on paper, nan as soon as exp overflows."""
    exponentials = logits.exp()
    return exponentials / exponentials.sum(dim=dim, keepdim=True)


def stable_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x - max) / sum(exp(x - max)): subtracting the max changes nothing mathematically, but keeps exp finite."""
    shifted = logits - logits.max(dim=dim, keepdim=True).values
    exponentials = shifted.exp()
    return exponentials / exponentials.sum(dim=dim, keepdim=True)


def log_sum_exp(logits: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """log(sum(exp(x))) computed as max + log(sum(exp(x - max))), so it never overflows."""
    largest = logits.max(dim=dim, keepdim=True).values
    # The largest term becomes exp(0) = 1, so the sum lies in [1, n] and its log is always finite.
    result = largest + (logits - largest).exp().sum(dim=dim, keepdim=True).log()
    return result if keepdim else result.squeeze(dim)


def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(softmax(x)) = x - log_sum_exp(x): exact even where softmax itself would round to 0."""
    return logits - log_sum_exp(logits, dim=dim, keepdim=True)
