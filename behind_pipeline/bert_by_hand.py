"""A BERT encoder written with plain torch ops: BertModel's forward pass from its state_dict (chapter 2).

Every function takes the weights as a plain ``state_dict`` (names as ``BertModel.state_dict()`` spells them,
e.g. ``encoder.layer.0.attention.self.query.weight``) and a config with BERT's attribute names
(``num_attention_heads``, ``layer_norm_eps``, ``num_hidden_layers``), so the same code runs the plain
all-MiniLM-L6-v2 encoder and the body of the course classifier (``classifier.base_model.state_dict()``, a
``BertModel`` offline; online the classifier is a DistilBERT, whose body this module does not rebuild).
Dropout is left out on purpose: the library applies it only in training mode, and we only run inference.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from behind_pipeline.batching import length_sorted_batches
from behind_pipeline.softmax import stable_softmax

Weights = dict[str, torch.Tensor]


def linear_by_hand(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``nn.Linear`` by hand, ``x @ W.T + b``: PyTorch stores the weight as (out_features, in_features).

    The book's one affine map: the encoder's layers (below) and the heads of chapter 3 all call it.
    """
    return x @ weight.T + bias  # (..., in) @ (in, out) + (out,) -> (..., out)


def linear(x: torch.Tensor, weights: Weights, name: str) -> torch.Tensor:
    """The Linear layer called ``name`` in a state_dict (``name.weight``, ``name.bias``) applied to ``x``."""
    return linear_by_hand(x, weights[f"{name}.weight"], weights[f"{name}.bias"])


def layer_norm(x: torch.Tensor, weights: Weights, name: str, eps: float) -> torch.Tensor:
    """Normalise each token's vector to mean 0, variance 1, then scale and shift with the learned weight and bias."""
    mean = x.mean(dim=-1, keepdim=True)
    # The biased variance (divide by n, not n - 1) is what nn.LayerNorm uses.
    variance = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(variance + eps) * weights[f"{name}.weight"] + weights[f"{name}.bias"]


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, ``x * Phi(x)`` with the Gaussian CDF written through erf: what BERT's ``hidden_act="gelu"`` is."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def embeddings(weights: Weights, config, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Word + position + token-type embeddings of each token, summed, then LayerNorm: (batch, seq, hidden).

    The book's one embeddings sum. Positions default to 0, 1, 2, ... from the left edge of the row, which is right
    for right-padded batches; a left-padded batch needs its own ``position_ids`` (chapter 2, exercise 4).
    """
    if token_type_ids is None:
        # One-sentence inputs are all segment 0, which is also what the library assumes when none are given.
        token_type_ids = torch.zeros_like(input_ids)
    if position_ids is None:
        position_ids = torch.arange(input_ids.shape[1])  # (seq,), broadcast over the batch
    summed = (
        weights["embeddings.word_embeddings.weight"][input_ids]  # (batch, seq, hidden)
        + weights["embeddings.position_embeddings.weight"][position_ids]  # (seq, hidden) or (batch, seq, hidden)
        + weights["embeddings.token_type_embeddings.weight"][token_type_ids]  # (batch, seq, hidden)
    )
    return layer_norm(summed, weights, "embeddings.LayerNorm", config.layer_norm_eps)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """0 where a key is a real token, a huge negative number where it is padding; shape (batch, 1, 1, seq).

    Added to the attention scores before softmax, it sends padding's weights to exactly 0. The most negative
    finite float (not -inf) keeps the arithmetic finite, as the library does.
    """
    blocked = torch.zeros(attention_mask.shape, dtype=dtype).masked_fill(attention_mask == 0, torch.finfo(dtype).min)
    return blocked[:, None, None, :]  # (batch, 1, 1, seq): broadcasts over heads and query tokens


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch, seq, hidden) to (batch, heads, seq, d_head): head h owns the slice ``h*d_head:(h+1)*d_head``."""
    batch, seq, hidden = x.shape
    return x.view(batch, seq, num_heads, hidden // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, d_head) back to (batch, seq, hidden): the heads' outputs side by side."""
    batch, heads, seq, d_head = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * d_head)


def scaled_dot_product_attention(query, key, value, mask: torch.Tensor | None = None):
    """softmax(Q K^T / sqrt(d_head) + mask) V; returns (context, probabilities).

    Dividing by sqrt(d_head) keeps the scores' spread near 1 whatever the head size, so softmax does not
    saturate into one-hot weights.
    """
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if mask is not None:
        scores = scores + mask
    probs = stable_softmax(scores, dim=-1)
    return probs @ value, probs


def attention(hidden: torch.Tensor, weights: Weights, prefix: str, config, mask: torch.Tensor | None = None):
    """Multi-head self-attention block: Q/K/V, attention per head, merge, output dense, residual + LayerNorm."""
    heads = config.num_attention_heads
    query = split_heads(linear(hidden, weights, f"{prefix}.self.query"), heads)
    key = split_heads(linear(hidden, weights, f"{prefix}.self.key"), heads)
    value = split_heads(linear(hidden, weights, f"{prefix}.self.value"), heads)
    context, probs = scaled_dot_product_attention(query, key, value, mask)
    projected = linear(merge_heads(context), weights, f"{prefix}.output.dense")
    # The residual connection: the block learns a change to its input, not a replacement of it.
    output = layer_norm(projected + hidden, weights, f"{prefix}.output.LayerNorm", config.layer_norm_eps)
    return output, probs


def feed_forward(hidden: torch.Tensor, weights: Weights, prefix: str, config, activation: Callable = gelu):
    """Position-wise feed-forward block: expand to ``intermediate_size``, GELU, project back, residual + LayerNorm."""
    expanded = activation(linear(hidden, weights, f"{prefix}.intermediate.dense"))
    projected = linear(expanded, weights, f"{prefix}.output.dense")
    return layer_norm(projected + hidden, weights, f"{prefix}.output.LayerNorm", config.layer_norm_eps)


def layer(hidden: torch.Tensor, weights: Weights, index: int, config, mask=None, activation: Callable = gelu):
    """One encoder layer (attention block then feed-forward block); returns (hidden, attention probabilities)."""
    prefix = f"encoder.layer.{index}"
    attended, probs = attention(hidden, weights, f"{prefix}.attention", config, mask)
    return feed_forward(attended, weights, prefix, config, activation), probs


@dataclass
class EncoderOutput:
    """What the hand encoder returns, named like the library's ``BaseModelOutput`` fields."""

    hidden_states: tuple[torch.Tensor, ...]  # embeddings output, then one per layer: num_hidden_layers + 1
    attentions: tuple[torch.Tensor, ...] | None  # one (batch, heads, seq, seq) per layer when asked for

    @property
    def last_hidden_state(self) -> torch.Tensor:
        return self.hidden_states[-1]


@torch.no_grad()
def encoder_forward(
    weights: Weights,
    config,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    output_attentions: bool = False,
    activation: Callable = gelu,
    position_ids: torch.Tensor | None = None,
) -> EncoderOutput:
    """The whole encoder: embeddings, then every layer; keeps each layer's output, like ``output_hidden_states``."""
    mask = None if attention_mask is None else additive_mask(attention_mask)  # (batch, 1, 1, seq)
    hidden_states = [embeddings(weights, config, input_ids, token_type_ids, position_ids)]  # (batch, seq, hidden)
    attentions = []
    for index in range(config.num_hidden_layers):
        hidden, probs = layer(hidden_states[-1], weights, index, config, mask, activation)
        hidden_states.append(hidden)
        attentions.append(probs)  # (batch, heads, seq, seq)
    return EncoderOutput(tuple(hidden_states), tuple(attentions) if output_attentions else None)


def max_diffs_by_layer(encoder, tokenizer, texts: Sequence[str], batch_size: int = 64) -> list[float]:
    """Largest |hand - library| over the real tokens of all ``texts``: one figure per hidden state.

    ``encoder`` is a ``BertModel``; both run the same padded batches (texts of similar length together, so there
    is little padding to compute) and padding positions are left out of the comparison: nothing reads them.
    """
    weights = encoder.state_dict()
    encoded = tokenizer(list(texts), truncation=True)["input_ids"]
    diffs = [0.0] * (encoder.config.num_hidden_layers + 1)
    for batch_indices in length_sorted_batches([len(ids) for ids in encoded], batch_size):
        batch = tokenizer.pad({"input_ids": [encoded[index] for index in batch_indices]}, return_tensors="pt")
        with torch.inference_mode():
            library = encoder(**batch, output_hidden_states=True).hidden_states
        hand = encoder_forward(weights, encoder.config, batch["input_ids"], batch["attention_mask"]).hidden_states
        real = batch["attention_mask"].bool()  # (batch, seq)
        for index, (mine, theirs) in enumerate(zip(hand, library, strict=True)):
            diffs[index] = max(diffs[index], (mine - theirs)[real].abs().max().item())
    return diffs


def component_of(name: str) -> tuple[str, str]:
    """(block, part) that a state_dict entry belongs to, e.g. ``("layer 0", "attention Q/K/V/out")``."""
    parts = name.split(".")
    if parts[0] == "embeddings":
        return "embeddings", parts[1].removesuffix("_embeddings")
    if parts[0] == "pooler":
        return "pooler", "dense"
    block = f"layer {parts[2]}"
    if "LayerNorm" in parts:
        return block, "LayerNorms"
    if parts[3] == "attention":
        return block, "attention Q/K/V/out"
    return block, "feed-forward"


def parameters_per_component(weights: Weights) -> dict[tuple[str, str], int]:
    """Number of parameters of each (block, part), in state_dict order; they add up to the model's total."""
    counts: dict[tuple[str, str], int] = {}
    for name, tensor in weights.items():
        key = component_of(name)
        counts[key] = counts.get(key, 0) + tensor.numel()
    return counts
