"""Chapter 7: mean pooling by hand equals the feature-extraction pipeline, ``embed`` cuts where sentence-transformers
does; each checker accepts the right answer, rejects the typical wrong ones (each named after its mistake) and never
raises."""

import pytest
import torch

from behind_pipeline.checks.ch07_other_heads import (
    check_max_pool,
    check_precision_at_k,
    check_word_logits,
    reference_precision_at_k,
)
from behind_pipeline.pooling import (
    cosine_similarity_matrix,
    embed,
    l2_normalize,
    max_seq_length,
    mean_pool,
    top_k,
)

from checker_asserts import ODD_ANSWERS, assert_accepted, assert_rejected, assert_reported

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


def test_embed_cuts_texts_at_the_sentence_transformers_limit(extractor):
    from behind_pipeline.models import classifier_id, encoder_id

    assert max_seq_length(encoder_id()) == 256  # sentence_bert_config.json of all-MiniLM-L6-v2
    assert max_seq_length(classifier_id()) is None  # a plain transformers checkpoint has no such file
    assert max_seq_length("") is None  # a model built in memory from a config
    long_text = "a film that never ends but keeps surprising " * 60  # about 480 tokens
    tokenizer, encoder = extractor.tokenizer, extractor.model
    assert len(tokenizer(long_text)["input_ids"]) > 400
    first_256 = tokenizer(long_text, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        expected = l2_normalize(mean_pool(encoder(**first_256).last_hidden_state, first_256["attention_mask"]))
    assert (embed([long_text], tokenizer, encoder) - expected).abs().max() < 1e-5
    assert (embed([long_text], tokenizer, encoder, max_length=512) - expected).abs().max() > 1e-3


def test_cosine_and_top_k_agree_with_torch():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=generator) * 3, torch.randn(10, 8, generator=generator)
    expected = torch.nn.functional.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1)
    assert torch.allclose(cosine_similarity_matrix(a, b), expected, atol=1e-6)
    indices, scores = top_k(a[0], b, k=4)
    assert indices == torch.argsort(expected[0], descending=True)[:4].tolist()
    assert scores == sorted(scores, reverse=True)


# --- exercise 1: max pooling ------------------------------------------------------------------------------------


def max_pool(token_vectors, attention_mask):
    padding = (attention_mask == 0).unsqueeze(-1)  # (batch, tokens, 1)
    return token_vectors.masked_fill(padding, float("-inf")).amax(dim=1)


def sentence_transformers_style(token_vectors, attention_mask):  # their Pooling module fills padding with -1e9
    mask = attention_mask.unsqueeze(-1).expand(token_vectors.shape)
    vectors = token_vectors.clone()
    vectors[mask == 0] = -1e9
    return torch.max(vectors, 1)[0]


def ignores_the_mask(token_vectors, attention_mask):
    return token_vectors.amax(dim=1)


def multiplies_by_the_mask(token_vectors, attention_mask):
    return (token_vectors * attention_mask.unsqueeze(-1)).amax(dim=1)


def mean_instead(token_vectors, attention_mask):
    return mean_pool(token_vectors, attention_mask)


def inverted_mask(token_vectors, attention_mask):
    return token_vectors.masked_fill(attention_mask.unsqueeze(-1) == 1, float("-inf")).amax(dim=1)


def fills_in_place(token_vectors, attention_mask):
    return token_vectors.masked_fill_((attention_mask == 0).unsqueeze(-1), float("-inf")).amax(dim=1)


def values_and_indices(token_vectors, attention_mask):
    return token_vectors.masked_fill((attention_mask == 0).unsqueeze(-1), float("-inf")).max(dim=1)


def right_padding_only(token_vectors, attention_mask):
    lengths = attention_mask.sum(dim=1).tolist()
    return torch.stack([token_vectors[i, :length].amax(dim=0) for i, length in enumerate(lengths)])


def needs_contiguous(token_vectors, attention_mask):
    batch, tokens, hidden = token_vectors.shape
    flat = token_vectors.view(batch * tokens, hidden)
    return max_pool(flat.view(batch, tokens, hidden), attention_mask)


def test_check_max_pool_accepts_the_solution_and_the_library_way():
    assert_accepted(check_max_pool, max_pool, sentence_transformers_style)


@pytest.mark.parametrize("answer, hint", [
    (ignores_the_mask, "padding positions took part"),
    (multiplies_by_the_mask, "0 beats real values"),
    (mean_instead, "that is the mean"),
    (inverted_mask, "dropped the real tokens"),
    (fills_in_place, "in place"),
    (values_and_indices, "return .values"),
    (right_padding_only, "left padding, float64, a non-contiguous view: the padding positions took part"),
    (needs_contiguous, "raised RuntimeError"),
])
def test_check_max_pool_rejects(answer, hint):
    assert_rejected(check_max_pool(answer), hint)


# --- exercise 2: word logits ------------------------------------------------------------------------------------


def word_logits(token_logits, word_ids):
    first_pieces, seen = [], set()
    for position, word in enumerate(word_ids):
        if word is not None and word not in seen:
            seen.add(word)
            first_pieces.append(position)
    return token_logits[first_pieces]


def mean_of_pieces(token_logits, word_ids):
    words = sorted({word for word in word_ids if word is not None})
    return torch.stack([token_logits[[p for p, w in enumerate(word_ids) if w == word]].mean(dim=0)
                        for word in words])


def last_piece(token_logits, word_ids):
    last = {word: position for position, word in enumerate(word_ids) if word is not None}
    return token_logits[[last[word] for word in sorted(last)]]


def every_piece(token_logits, word_ids):
    return token_logits[[position for position, word in enumerate(word_ids) if word is not None]]


def every_position(token_logits, word_ids):
    return token_logits


def tensor_of_word_ids(token_logits, word_ids):
    ids = torch.tensor(word_ids)
    return token_logits[torch.unique(ids, return_inverse=False)]


def strips_cls_and_sep(token_logits, word_ids):  # right only for one-piece words without padding
    return token_logits[1:-1]


def zeroes_the_logits_first(token_logits, word_ids):  # writes into the caller's tensor, then reads it
    token_logits.zero_()
    return word_logits(token_logits, word_ids)


def test_check_word_logits_accepts_the_solution():
    assert check_word_logits(word_logits).passed


@pytest.mark.parametrize("answer, hint", [
    (mean_of_pieces, "average of each word's pieces"),
    (last_piece, "last piece"),
    (every_piece, "one row per piece"),
    (every_position, "one row per position"),
    (tensor_of_word_ids, "skip those positions"),
    (strips_cls_and_sep, "one row per word"),
    (zeroes_the_logits_first, "the rows differ from the first piece"),
])
def test_check_word_logits_rejects(answer, hint):
    assert_rejected(check_word_logits(answer), hint)


# --- exercise 3: same-movie precision@k -------------------------------------------------------------------------


def precision_at_k(embeddings, movies, k):
    similarity = cosine_similarity_matrix(embeddings, embeddings)
    similarity.fill_diagonal_(float("-inf"))
    nearest = similarity.topk(k, dim=1).indices
    hits = sum(movies[j] == movies[i] for i, row in enumerate(nearest.tolist()) for j in row)
    return hits / (len(movies) * k)


def _hits(similarity, movies, count):
    nearest = similarity.topk(count, dim=1).indices.tolist()
    return torch.tensor([sum(movies[j] == movies[i] for j in row) for i, row in enumerate(nearest)],
                        dtype=torch.float64)


def includes_itself(embeddings, movies, k):
    return (_hits(cosine_similarity_matrix(embeddings, embeddings), movies, k) / k).mean().item()


def dot_product(embeddings, movies, k):
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(float("-inf"))
    return (_hits(similarity, movies, k) / k).mean().item()


def least_similar(embeddings, movies, k):
    similarity = -cosine_similarity_matrix(embeddings, embeddings)
    similarity.fill_diagonal_(float("-inf"))
    return (_hits(similarity, movies, k) / k).mean().item()


def recall_instead(embeddings, movies, k):
    similarity = cosine_similarity_matrix(embeddings, embeddings).fill_diagonal_(float("-inf"))
    others = torch.tensor([max(movies.count(movie) - 1, 1) for movie in movies], dtype=torch.float64)
    return (_hits(similarity, movies, k) / others).mean().item()


def as_percentage(embeddings, movies, k):
    return 100 * precision_at_k(embeddings, movies, k)


def skips_lonely_films(embeddings, movies, k):
    similarity = cosine_similarity_matrix(embeddings, embeddings).fill_diagonal_(float("-inf"))
    keep = torch.tensor([movies.count(movie) > 1 for movie in movies])
    return (_hits(similarity, movies, k)[keep] / k).mean().item()


def one_per_review(embeddings, movies, k):
    similarity = cosine_similarity_matrix(embeddings, embeddings).fill_diagonal_(float("-inf"))
    return (_hits(similarity, movies, k) / k).tolist()


def test_check_precision_at_k_accepts_the_solution_and_agrees_with_the_reference():
    assert check_precision_at_k(precision_at_k).passed
    generator = torch.Generator().manual_seed(0)
    embeddings, movies = torch.randn(30, 5, generator=generator), [i % 4 for i in range(30)]
    assert abs(precision_at_k(embeddings, movies, 3) - reference_precision_at_k(embeddings, movies, 3)) < 1e-9


@pytest.mark.parametrize("answer, hint", [
    (includes_itself, "leave it out"),
    (dot_product, "rank by cosine"),
    (least_similar, "*least* similar"),
    (recall_instead, "(recall)"),
    (as_percentage, "percentage"),
    (skips_lonely_films, "no other review"),
    (one_per_review, "return one number"),
])
def test_check_precision_at_k_rejects(answer, hint):
    assert_rejected(check_precision_at_k(answer), hint)


# --- every checker reports, whatever it is given --------------------------------------------------------------


@pytest.mark.parametrize("check", [check_max_pool, check_word_logits, check_precision_at_k])
@pytest.mark.parametrize("name", list(ODD_ANSWERS))
def test_checkers_report_odd_answers_and_never_raise(check, name):
    assert_reported(check(ODD_ANSWERS[name]))
