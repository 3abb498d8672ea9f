"""Sentence embeddings by hand: mean pooling with the attention mask, L2 norm, cosine, top-k search (chapter 7).

all-MiniLM-L6-v2 was trained as a sentence-transformers model: a BERT body, then mean pooling over the real
tokens (``1_Pooling/config.json``: ``pooling_mode_mean_tokens``), then L2 normalisation (the ``Normalize``
module in ``modules.json``), with inputs cut at ``max_seq_length`` tokens (``sentence_bert_config.json``). The body
alone returns one vector per token; these functions rebuild the steps that turn them into one unit vector per
text, and the nearest-neighbour search that such vectors are made for. In this book *embed* means exactly that:
:func:`embed` returns the sentence embedding of each text.
"""

import json
from pathlib import Path

import torch

from behind_pipeline.batching import length_sorted_batches

# Large enough to keep a 1,445-review corpus to a few dozen forward passes, small enough for any machine's memory:
# the longest test review is 78 tokens, so a batch is at most 64 x 78 x 384 floats (about 7.7 MB).
EMBED_BATCH_SIZE = 64
# The files in which a sentence-transformers model writes how its body's token vectors become one vector per text.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json")


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


def sentence_transformers_file(model_id: str, name: str) -> dict | None:
    """One JSON file of a sentence-transformers model folder (local or on the Hub), or None if the model has none.

    ``cached_file`` finds a file inside a local model folder or downloads it from the Hub, so the same call works
    offline and online; a plain transformers checkpoint (the course classifier) simply has no such file.
    """
    from transformers.utils import cached_file

    path = cached_file(model_id, name, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)
    return None if path is None else json.loads(Path(path).read_text())


def sentence_transformers_config(model_id: str) -> dict:
    """The files that say how the model pools and where it cuts a text, by file name (missing files left out)."""
    found = {name: sentence_transformers_file(model_id, name) for name in SENTENCE_TRANSFORMERS_FILES}
    return {name: content for name, content in found.items() if content is not None}


def max_seq_length(model_id: str) -> int | None:
    """sentence-transformers' input limit in tokens (``sentence_bert_config.json``), or None when the model has none.

    For all-MiniLM-L6-v2 it is 256, although the BERT body has 512 positions: sentence-transformers cuts every
    text at this length, and the limit takes priority over the tokenizer's ``model_max_length``.
    """
    if not model_id:  # a model built from a config in memory has no folder to read
        return None
    config = sentence_transformers_file(model_id, "sentence_bert_config.json")
    return None if config is None else int(config["max_seq_length"])


def embed(texts: list[str], tokenizer, encoder, batch_size: int = EMBED_BATCH_SIZE,
          max_length: int | None = None) -> torch.Tensor:
    """The sentence embedding of each text, shape (len(texts), hidden), row i for ``texts[i]``, each of length 1.

    Tokenizer (cut at ``max_length`` tokens; default: the encoder's ``max_seq_length`` from its
    ``sentence_bert_config.json``, or the tokenizer's own limit for a model without one), body, mean pooling over
    the real tokens, L2 normalisation.
    """
    texts = list(texts)  # a datasets Column or a tuple both work
    if max_length is None:
        max_length = max_seq_length(encoder.name_or_path)
    # Tokenize once, then batch texts of similar token length (chapter 6: little padding, so little wasted compute),
    # as predict.predict_logits does. The mask makes each result independent of its batch: sorting changes speed.
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    embeddings = torch.empty(len(texts), encoder.config.hidden_size)
    was_training = encoder.training
    encoder.eval()  # dropout off: the same text always gets the same vector
    with torch.inference_mode():
        for batch in length_sorted_batches([len(ids) for ids in encoded["input_ids"]], batch_size):
            features = {key: [encoded[key][index] for index in batch] for key in encoded}
            encoding = tokenizer.pad(features, return_tensors="pt")
            token_vectors = encoder(**encoding).last_hidden_state  # (batch, tokens, hidden)
            embeddings[batch] = l2_normalize(mean_pool(token_vectors, encoding["attention_mask"]))  # original order
    encoder.train(was_training)
    return embeddings


def top_k(query_embedding: torch.Tensor, corpus_embeddings: torch.Tensor, k: int = 3) -> tuple[list[int], list[float]]:
    """Indices and cosine scores of the ``k`` corpus rows nearest the query, best first."""
    scores = cosine_similarity_matrix(query_embedding.reshape(1, -1), corpus_embeddings)[0]
    # torch.topk returns the largest values sorted in descending order, which is the ranking a search shows.
    best = torch.topk(scores, k=min(k, len(scores)))
    return best.indices.tolist(), best.values.tolist()


def semantic_search(query: str, corpus: list[str], corpus_embeddings: torch.Tensor, tokenizer, encoder, k: int = 3):
    """The ``k`` corpus texts nearest ``query`` as dicts {index, score, text}, best first.

    The score is a cosine: it ranks the corpus for this query; it is not a probability of being relevant.
    """
    indices, scores = top_k(embed([query], tokenizer, encoder)[0], corpus_embeddings, k)
    return [{"index": i, "score": s, "text": corpus[i]} for i, s in zip(indices, scores, strict=True)]
