"""Softmax written by hand: logits to probabilities, stable for any logit size (chapter 4)."""

import torch


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
