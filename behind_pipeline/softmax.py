"""Softmax written by hand: logits to probabilities, stable for any logit size (chapter 4)."""

import torch


def stable_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x - max) / sum(exp(x - max)): subtracting the max changes nothing mathematically, but keeps exp finite."""
    shifted = logits - logits.max(dim=dim, keepdim=True).values
    exponentials = shifted.exp()
    return exponentials / exponentials.sum(dim=dim, keepdim=True)
