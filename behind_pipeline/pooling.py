"""Sentence embeddings by hand: mean pooling with the attention mask, L2 norm, cosine, top-k search (chapter 7).

all-MiniLM-L6-v2 was trained as a sentence-transformers model: a BERT body, then mean pooling over the real
tokens (``1_Pooling/config.json``: ``pooling_mode_mean_tokens``), then L2 normalisation (the ``Normalize``
module in ``modules.json``). The body alone returns one vector per token; these functions rebuild the two steps
that turn them into one unit vector per text, and the nearest-neighbour search that such vectors are made for.
"""

import json
from pathlib import Path

import torch

from behind_pipeline.batching import length_sorted_batches

# Large enough to keep a 1,445-review corpus to a few dozen forward passes, small enough for any machine's memory:
# the longest test review is 78 tokens, so a batch is at most 64 x 78 x 384 floats (about 7.7 MB).
EMBED_BATCH_SIZE = 64


def mean_pool(token_vectors: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of each text's real token vectors: (batch, tokens, hidden) and (batch, tokens) -> (batch, hidden)."""
    # unsqueeze: the mask must be (batch, tokens, 1) to broadcast over the hidden axis; 0 at padding zeroes it out.
    mask = attention_mask.unsqueeze(-1).to(token_vectors.dtype)
    summed = (token_vectors * mask).sum(dim=1)
    # Divide by the number of real tokens, not by the padded length; the clamp only guards an all-padding row.
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def l2_normalize(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each row divided by its Euclidean length, so it has length 1 (the eps avoids dividing by zero)."""
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=eps)


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of every row of ``a`` with every row of ``b``: shape (len(a), len(b)), values in [-1, 1]."""
    # Once both sides have unit length, a dot product is the cosine; one matrix product does all pairs.
    return l2_normalize(a) @ l2_normalize(b).T


def embed(texts: list[str], tokenizer, encoder, batch_size: int = EMBED_BATCH_SIZE) -> torch.Tensor:
    """Unit-length sentence embeddings, shape (len(texts), hidden): tokenizer, body, mean pooling, L2 norm."""
    texts = list(texts)
    embeddings = torch.empty(len(texts), encoder.config.hidden_size)
    # Batching texts of similar length wastes little compute on padding (chapter 6); the mask makes the result
    # independent of the batch a text lands in, so sorting changes only the speed. Characters approximate tokens.
    for batch in length_sorted_batches([len(text) for text in texts], batch_size):
        encoding = tokenizer([texts[index] for index in batch], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            token_vectors = encoder(**encoding).last_hidden_state
        embeddings[batch] = l2_normalize(mean_pool(token_vectors, encoding["attention_mask"]))  # original order
    return embeddings


def top_k(query_embedding: torch.Tensor, corpus_embeddings: torch.Tensor, k: int = 3) -> tuple[list[int], list[float]]:
    """Indices and cosine scores of the ``k`` corpus rows nearest the query, best first."""
    scores = cosine_similarity_matrix(query_embedding.reshape(1, -1), corpus_embeddings)[0]
    # torch.topk returns the largest values sorted in descending order, which is the ranking a search shows.
    best = torch.topk(scores, k=min(k, len(scores)))
    return best.indices.tolist(), best.values.tolist()


def semantic_search(query: str, corpus: list[str], corpus_embeddings: torch.Tensor, tokenizer, encoder, k: int = 3):
    """The ``k`` corpus texts nearest ``query`` as dicts {index, score, text}, best first."""
    indices, scores = top_k(embed([query], tokenizer, encoder)[0], corpus_embeddings, k)
    return [{"index": i, "score": s, "text": corpus[i]} for i, s in zip(indices, scores, strict=True)]


def sentence_transformers_config(model_id: str) -> dict:
    """The two files that say how the model pools: ``modules.json`` and ``1_Pooling/config.json``, read as JSON.

    ``cached_file`` finds a file inside a local model folder or downloads it from the Hub, so the same call works
    offline and online.
    """
    from transformers.utils import cached_file

    return {name: json.loads(Path(cached_file(model_id, name)).read_text())
            for name in ("modules.json", "1_Pooling/config.json")}
