"""Chapter 7: mean pooling by hand equals the feature-extraction pipeline; the exercise checkers grade behaviour."""

import pytest
import torch

from behind_pipeline.checks.ch07_other_heads import (
    check_cosine_similarity,
    check_mean_pool,
    check_token_head_shapes,
    check_top_k_indices,
)
from behind_pipeline.pooling import cosine_similarity_matrix, embed, l2_normalize, mean_pool, top_k

PARITY_SAMPLE = 128  # test reviews run alone through the pipeline: each is one forward pass, so keep it modest


@pytest.fixture(scope="module")
def extractor():
    from transformers import pipeline

    from behind_pipeline.models import encoder_id

    return pipeline("feature-extraction", model=encoder_id())


@pytest.fixture(scope="module")
def sample(splits):
    return list(splits["test"]["text"][:PARITY_SAMPLE])


def test_masked_mean_pooling_of_a_padded_batch_equals_the_pipeline_run_alone(extractor, sample):
    reference = torch.stack([extractor(text, return_tensors=True)[0].mean(dim=0) for text in sample])
    encoding = extractor.tokenizer(sample, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        token_vectors = extractor.model(**encoding).last_hidden_state
    assert (encoding["attention_mask"] == 0).any(), "the sample must contain padding for the test to mean anything"
    assert (mean_pool(token_vectors, encoding["attention_mask"]) - reference).abs().max() < 1e-4
    # The pitfall the chapter shows: a plain mean over the padded batch is far off.
    assert (token_vectors.mean(dim=1) - reference).abs().max() > 1e-2


def test_embed_is_unit_length_in_input_order_and_independent_of_batch_size(extractor, sample):
    small = embed(sample, extractor.tokenizer, extractor.model, batch_size=7)
    large = embed(sample, extractor.tokenizer, extractor.model, batch_size=64)
    assert small.shape == (len(sample), 384)
    assert ((small.norm(dim=-1) - 1).abs() < 1e-5).all()
    assert (small - large).abs().max() < 1e-4
    alone = l2_normalize(extractor(sample[5], return_tensors=True)[0].mean(dim=0))
    assert (small[5] - alone).abs().max() < 1e-4


def test_cosine_and_top_k_agree_with_torch():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=generator) * 3, torch.randn(10, 8, generator=generator)
    expected = torch.nn.functional.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1)
    assert torch.allclose(cosine_similarity_matrix(a, b), expected, atol=1e-6)
    indices, scores = top_k(a[0], b, k=4)
    assert indices == torch.argsort(expected[0], descending=True)[:4].tolist()
    assert scores == sorted(scores, reverse=True)


# --- checkers -------------------------------------------------------------------------------------------------


def test_check_mean_pool():
    assert check_mean_pool(mean_pool).passed
    naive = check_mean_pool(lambda vectors, mask: vectors.mean(dim=1))
    assert not naive.passed and "padding" in repr(naive)
    wrong_divisor = check_mean_pool(lambda vectors, mask: (vectors * mask.unsqueeze(-1)).sum(1) / mask.shape[1])
    assert not wrong_divisor.passed
    assert not check_mean_pool(lambda vectors, mask: vectors[:, 0]).passed
    assert "still `...`" in repr(check_mean_pool(...))


def test_check_cosine_similarity():
    assert check_cosine_similarity(cosine_similarity_matrix).passed
    dot = check_cosine_similarity(lambda a, b: a @ b.T)
    assert not dot.passed and "normalise" in repr(dot)
    assert not check_cosine_similarity(lambda a, b: l2_normalize(a) @ b.T).passed

    def blank(a, b): ...

    assert not check_cosine_similarity(blank).passed


def test_check_top_k_indices():
    assert check_top_k_indices(lambda query, corpus, k: top_k(query, corpus, k)[0]).passed
    assert check_top_k_indices(lambda query, corpus, k: torch.topk(corpus @ query, k).indices).passed
    ascending = check_top_k_indices(lambda query, corpus, k: torch.argsort(corpus @ query)[-k:].tolist())
    assert not ascending.passed and "ascending" in repr(ascending)
    assert not check_top_k_indices(lambda query, corpus, k: torch.argsort(corpus @ query)[:k].tolist()).passed
    assert not check_top_k_indices(lambda query, corpus, k: [0]).passed
    assert "still `...`" in repr(check_top_k_indices(...))


def test_check_token_head_shapes():
    encoding = {"input_ids": torch.zeros(2, 13, dtype=torch.long)}
    right = {"token_classification": (2, 13, 3), "sequence_classification": torch.Size([2, 3])}
    assert check_token_head_shapes(right, encoding).passed
    no_token_axis = check_token_head_shapes({**right, "token_classification": (2, 3)}, encoding)
    assert not no_token_axis.passed and "every token" in repr(no_token_axis)
    assert not check_token_head_shapes({**right, "token_classification": (2, 13, 384)}, encoding).passed
    assert not check_token_head_shapes({**right, "sequence_classification": (2, 13, 3)}, encoding).passed
    assert not check_token_head_shapes({"token": (2, 13, 3)}, encoding).passed
    blank = check_token_head_shapes(..., encoding)
    assert not blank.passed and "still `...`" in repr(blank)
