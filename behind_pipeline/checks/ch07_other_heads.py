"""Checkers for chapter 7's exercises: mean pooling, cosine similarity, top-k search, a token-level head's shape."""

import torch

from behind_pipeline.checks._core import CheckReport, as_tensor
from behind_pipeline.pooling import l2_normalize, mean_pool

# Three texts of 5, 3 and 2 real tokens padded to 5, like a tokenizer's output (int64 mask, padding at the end).
POOL_MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
NUM_LABELS = 3


def _pool_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token vectors whose padding positions hold large values, so averaging them shows at once."""
    generator = torch.Generator().manual_seed(seed)
    token_vectors = torch.randn(3, 5, 4, generator=generator)
    token_vectors[POOL_MASK == 0] = 50.0
    return token_vectors, POOL_MASK.clone()


def _shape_text(tensor: torch.Tensor | None) -> str:
    return "something that is not a tensor" if tensor is None else str(tuple(tensor.shape))


def check_mean_pool(mean_pool_fn) -> CheckReport:
    """``mean_pool_fn(token_vectors, attention_mask)`` must average only the real tokens of each row."""
    report = CheckReport("Mean pooling with the attention mask")
    token_vectors, attention_mask = _pool_inputs()
    result = report.call(mean_pool_fn, token_vectors.clone(), attention_mask.clone(), name="mean_pool")
    if result is Ellipsis:
        return report
    result = as_tensor(result, dtype=torch.float32)
    if not report.expect(result is not None and tuple(result.shape) == (3, 4), "shape (batch, hidden) = (3, 4)",
                         f"expected shape (3, 4), one vector per text, got {_shape_text(result)}"):
        return report
    expected = mean_pool(token_vectors, attention_mask)
    naive = token_vectors.mean(dim=1)
    if torch.allclose(result, naive, atol=1e-4) and not torch.allclose(naive, expected, atol=1e-4):
        report.fail("you averaged the padding positions too: sum only where attention_mask is 1, and divide by the "
                    "number of real tokens of each row")
        return report
    masked_sum_over_all = (token_vectors * attention_mask.unsqueeze(-1)).sum(dim=1) / attention_mask.shape[1]
    if torch.allclose(result, masked_sum_over_all, atol=1e-4):
        report.fail("padding is zeroed but you divided by the padded length: divide by attention_mask.sum(dim=1)")
        return report
    report.expect(torch.allclose(result, expected, atol=1e-5), "equals the average of each text's real tokens",
                  f"max abs diff to the masked mean is {(result - expected).abs().max().item():.1e}")
    report.expect(torch.allclose(result[0], token_vectors[0].mean(dim=0), atol=1e-5),
                  "a row without padding is its plain mean", "a row without padding should be its plain mean")
    return report


def check_cosine_similarity(cosine_fn) -> CheckReport:
    """``cosine_fn(a, b)`` must return the (len(a), len(b)) matrix of cosines, for vectors of any length."""
    report = CheckReport("Cosine similarity matrix")
    generator = torch.Generator().manual_seed(1)
    # Rows with very different lengths: a plain dot product would rank by length instead of direction.
    a = torch.randn(3, 6, generator=generator) * torch.tensor([[1.0], [10.0], [0.1]])
    b = torch.randn(4, 6, generator=generator) * torch.tensor([[5.0], [1.0], [0.5], [2.0]])
    result = report.call(cosine_fn, a.clone(), b.clone(), name="cosine_similarity")
    if result is Ellipsis:
        return report
    result = as_tensor(result, dtype=torch.float32)
    if not report.expect(result is not None and tuple(result.shape) == (3, 4), "shape (len(a), len(b)) = (3, 4)",
                         f"expected shape (3, 4), got {_shape_text(result)}"):
        return report
    if torch.allclose(result, a @ b.T, atol=1e-4):
        report.fail("that is the plain dot product: divide each row by its length (L2 normalise) first")
        return report
    expected = torch.nn.functional.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1)
    report.expect(torch.allclose(result, expected, atol=1e-5), "equals torch.nn.functional.cosine_similarity",
                  f"max abs diff to the cosines is {(result - expected).abs().max().item():.1e}")
    itself = report.call(cosine_fn, a.clone(), a.clone(), name="cosine_similarity")
    itself = None if itself is Ellipsis else as_tensor(itself, dtype=torch.float32)
    if itself is not None and itself.shape == (3, 3):
        report.expect(torch.allclose(itself.diagonal(), torch.ones(3), atol=1e-5),
                      "every vector has cosine 1 with itself", "cosine_similarity(a, a) should have 1 on its diagonal")
    return report


def check_top_k_indices(top_k_fn) -> CheckReport:
    """``top_k_fn(query_embedding, corpus_embeddings, k)`` must return the k best indices, best first."""
    report = CheckReport("Top-k semantic search")
    generator = torch.Generator().manual_seed(2)
    # Unit-length rows, as ``embed`` returns them; the query sits near rows 7 and 11 so the ranking is clear-cut.
    corpus_embeddings = l2_normalize(torch.randn(20, 8, generator=generator))
    query_embedding = l2_normalize(corpus_embeddings[7] + 0.3 * corpus_embeddings[11])
    scores = corpus_embeddings @ query_embedding
    for k in (3, 5):
        result = report.call(top_k_fn, query_embedding.clone(), corpus_embeddings.clone(), k, name="top_k_indices")
        if result is Ellipsis:
            return report
        try:
            indices = [int(i) for i in torch.as_tensor(result).reshape(-1).tolist()]
        except (TypeError, ValueError, RuntimeError):
            report.fail(f"return a list of k integer indices, got {type(result).__name__}")
            return report
        if not report.expect(len(indices) == k, f"k={k}: {k} indices",
                             f"k={k}: expected {k} indices, got {len(indices)}"):
            return report
        best_first = torch.argsort(scores, descending=True)[:k].tolist()
        worst_first = torch.argsort(scores)[:k].tolist()
        if indices == worst_first or indices == best_first[::-1]:
            report.fail(f"k={k}: these are in ascending order of score; a search shows the best match first")
            return report
        if sorted(indices) == sorted(best_first) and indices != best_first:
            report.fail(f"k={k}: the right reviews in the wrong order; sort them by descending score")
            return report
        report.expect(indices == best_first, f"k={k}: the best indices, best first",
                      f"k={k}: expected {best_first}, got {indices}")
    return report


def _shape_of(value) -> tuple[int, ...] | None:
    try:
        return tuple(int(size) for size in value)
    except (TypeError, ValueError):
        return None


def check_token_head_shapes(answer, encoding) -> CheckReport:
    """``answer`` maps each head to the shape of its logits for ``encoding`` with 3 labels."""
    report = CheckReport("Token-level head vs sequence-level head")
    if not report.answered(answer, "answer"):
        return report
    if not isinstance(answer, dict) or not {"token_classification", "sequence_classification"} <= set(answer):
        report.fail('answer must be a dict with keys "token_classification" and "sequence_classification"')
        return report
    batch, tokens = (int(size) for size in encoding["input_ids"].shape)
    token_shape = _shape_of(answer["token_classification"])
    sequence_shape = _shape_of(answer["sequence_classification"])
    hints = {
        (batch, NUM_LABELS): "that is one row per text: a token head scores every token",
        (batch, tokens, 384): "384 is the hidden size; the head maps each token vector to num_labels scores",
        (batch, NUM_LABELS, tokens): "the label axis comes last, as for the sequence head",
        (tokens, NUM_LABELS): "keep the batch axis first",
    }
    report.expect(token_shape == (batch, tokens, NUM_LABELS),
                  f"token classification: (batch, tokens, num_labels) = {(batch, tokens, NUM_LABELS)}",
                  f"token classification: got {token_shape}; " + hints.get(token_shape, "think batch, tokens, labels"))
    report.expect(sequence_shape == (batch, NUM_LABELS),
                  f"sequence classification: (batch, num_labels) = {(batch, NUM_LABELS)}",
                  f"sequence classification: got {sequence_shape}; the head sees one pooled vector per text, "
                  "so there is no token axis")
    return report
