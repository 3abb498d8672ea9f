"""Checkers for chapter 7's exercises: max pooling with the mask, one row of token logits per word, and
same-movie precision@k for semantic search.

Each checker tries the learner's code on more than one example (other batch, hidden and label sizes, left as
well as right padding, a text of one real token, a word of three pieces, a film with a single review, k at its
limits), on values chosen to expose the usual mistakes (padding full of large numbers, real values that are all
negative, vectors of very different lengths), on contiguous tensors and on views, and never raises: every failure
is a report line.
"""

import torch

from behind_pipeline.checks._core import CheckReport, as_tensor, course_tokenizer, named_mistakes
from behind_pipeline.pooling import cosine_similarity_matrix, mean_pool

TOLERANCE = 1e-5

# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: max pooling with the attention mask
# ---------------------------------------------------------------------------------------------------------------


def reference_max_pool(token_vectors: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Largest value of each hidden unit over a text's real tokens: (batch, tokens, hidden) -> (batch, hidden)."""
    padding = (attention_mask == 0).unsqueeze(-1)  # (batch, tokens, 1)
    return token_vectors.masked_fill(padding, float("-inf")).amax(dim=1)


def _max_pool_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(where, token_vectors, attention_mask): right and left padding, float32 and float64, a view, 1 real token."""
    generator = torch.Generator().manual_seed(7)
    # Right padding, 5 / 3 / 1 real tokens; text 1 is negative in every unit, so a zeroed padding position would
    # beat all its real values; every padding position holds +50, so any padding that takes part shows at once.
    right = torch.randn(3, 5, 4, generator=generator)
    right[1] = -right[1].abs() - 0.5
    mask_right = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    right[mask_right == 0] = 50.0
    # Left padding (as decoders pad), float64, and a non-contiguous view: the transpose of (batch, hidden, tokens).
    left = (torch.randn(2, 7, 6, generator=generator, dtype=torch.float64) - 1.0).transpose(1, 2)
    mask_left = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    left[mask_left == 0] = 50.0
    return [("right padding, 5/3/1 real tokens", right, mask_right),
            ("left padding, float64, a non-contiguous view", left, mask_left)]


def _max_pool_mistake(result: torch.Tensor, vectors: torch.Tensor, mask: torch.Tensor) -> str:
    vectors, mask3 = vectors.double(), mask.unsqueeze(-1).double()
    candidates = {
        "the padding positions took part (they hold 50 here): fill them with -inf before the max": vectors.amax(1),
        "multiplying by the mask puts 0 at padding, and 0 beats real values that are all negative: fill padding "
        "with float('-inf') (masked_fill) instead": (vectors * mask3).amax(1),
        "that is the mean of the real tokens; max pooling keeps the largest value of each unit": mean_pool(
            vectors, mask),
        "you kept the padding and dropped the real tokens: fill where attention_mask == 0": vectors.masked_fill(
            mask3 == 1, float("-inf")).amax(1),
    }
    named = named_mistakes(result, candidates,
                           lambda answer, value: torch.allclose(answer, value, atol=TOLERANCE, equal_nan=True))
    return named[0] if named else "the values differ from the largest value over each text's real tokens"


def check_max_pool(max_pool) -> CheckReport:
    """``max_pool(token_vectors, attention_mask)``: per text, the largest value of each unit over its real tokens."""
    report = CheckReport("Max pooling with the attention mask")
    if not report.answered(max_pool, "max_pool"):
        return report
    for where, vectors, mask in _max_pool_cases():
        snapshot = vectors.clone(), mask.clone()
        expected = reference_max_pool(*snapshot).double()
        given_vectors, given_mask = vectors.clone() if vectors.is_contiguous() else vectors, mask.clone()
        result = report.call(max_pool, given_vectors, given_mask, name="max_pool")
        if result is Ellipsis:
            return report
        if isinstance(result, tuple) and len(result) == 2:
            report.fail(f"{where}: torch.max(..., dim=1) returns (values, indices): return .values")
            return report
        batch, _, hidden = vectors.shape
        result = report.tensor(result, f"{where}: max_pool(...)", shape=(batch, hidden))
        if result is None:
            return report
        if torch.allclose(result, expected, atol=TOLERANCE):
            report.ok(f"{where}: the largest value of each unit over the real tokens, shape {(batch, hidden)}")
        else:
            report.fail(f"{where}: {_max_pool_mistake(result, *snapshot)}")
        report.expect(torch.equal(given_vectors, snapshot[0]) and torch.equal(given_mask, snapshot[1]),
                      f"{where}: inputs left unchanged",
                      f"{where}: you changed token_vectors or attention_mask in place (masked_fill_, or an "
                      "assignment into it); the body's output is used again: use masked_fill, which returns a copy")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: a token-level head's logits, one row per word
# ---------------------------------------------------------------------------------------------------------------

WORD_TEXTS = ["Polanski's unbelievably understated drama", "A gorgeous film."]


def reference_word_logits(token_logits: torch.Tensor, word_ids: list) -> torch.Tensor:
    """The row of each word's first piece, in word order: (tokens, num_labels) -> (words, num_labels)."""
    first_piece = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in first_piece:
            first_piece[word] = position
    return token_logits[[first_piece[word] for word in sorted(first_piece)]]


def _word_cases() -> list[tuple[str, torch.Tensor, list]]:
    """(where, token_logits, word_ids): a padded batch from the tokenizer, 3-piece words, a one-word text."""
    generator = torch.Generator().manual_seed(11)
    encoding = course_tokenizer()(WORD_TEXTS, padding=True)
    batch_logits = torch.randn(2, len(encoding["input_ids"][0]), 3, generator=generator) * 4  # (batch, tokens, 3)
    cases = [(f"{text!r} (padded to {len(batch_logits[i])} tokens, 3 labels)", batch_logits[i],
              encoding.word_ids(i)) for i, text in enumerate(WORD_TEXTS)]
    # A word in three pieces first, another in two; 5 labels; logits as a non-contiguous view (labels, tokens).T.
    word_ids = [None, 0, 0, 0, 1, 2, 2, None]
    view = (torch.randn(5, len(word_ids), generator=generator) * 4).T
    cases.append(("word_ids [None, 0, 0, 0, 1, 2, 2, None], 5 labels, a non-contiguous view", view, word_ids))
    cases.append(("a one-word text [None, 0, None]", torch.randn(3, 2, generator=generator) * 4, [None, 0, None]))
    return cases


def _pieces(word_ids: list) -> dict:
    pieces: dict = {}
    for position, word in enumerate(word_ids):
        if word is not None:
            pieces.setdefault(word, []).append(position)
    return pieces


def _word_mistake(result: torch.Tensor, logits: torch.Tensor, word_ids: list) -> str:
    pieces, logits = _pieces(word_ids), logits.double()
    words = sorted(pieces)
    candidates = {
        "that is the average of each word's pieces; take the row of its first piece": torch.stack(
            [logits[pieces[w]].mean(dim=0) for w in words]),
        "that is each word's last piece; take its first": torch.stack([logits[pieces[w][-1]] for w in words]),
    }
    named = named_mistakes(result, candidates, lambda answer, value: answer.shape == value.shape
                           and torch.allclose(answer, value, atol=TOLERANCE))
    return named[0] if named else "the rows differ from the first piece of each word, in word order"


def check_word_logits(word_logits) -> CheckReport:
    """``word_logits(token_logits, word_ids)``: the logits of each word's first piece, (words, num_labels)."""
    report = CheckReport("Token logits to word logits")
    if not report.answered(word_logits, "word_logits"):
        return report
    for where, logits, word_ids in _word_cases():
        snapshot = logits.clone()  # what the answer is judged on, even if the learner's code writes into logits
        result = report.call(word_logits, logits, list(word_ids), name="word_logits")
        if result is Ellipsis:
            if any("None" in line and "raised" in line for line in report.lines):
                report.fail(f"{where}: word_ids holds None for [CLS], [SEP] and padding: skip those positions")
            return report
        words = len(_pieces(word_ids))
        value = report.tensor(result, f"{where}: word_logits(...)")
        if value is None:
            return report
        real = sum(word is not None for word in word_ids)
        if tuple(value.shape) != (words, snapshot.shape[-1]):
            hint = {real: "one row per piece: keep only each word's first piece",
                    len(word_ids): "one row per position: drop [CLS], [SEP] and padding (word id None)"}.get(
                value.shape[0] if value.dim() == 2 else -1, "one row per word")
            report.fail(f"{where}: shape {tuple(value.shape)}, expected ({words}, {snapshot.shape[-1]}): {hint}")
            continue
        if torch.allclose(value, reference_word_logits(snapshot, word_ids).double(), atol=TOLERANCE):
            report.ok(f"{where}: {words} word(s), each the row of its first piece")
        else:
            report.fail(f"{where}: {_word_mistake(value, snapshot, word_ids)}")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: same-movie precision@k
# ---------------------------------------------------------------------------------------------------------------


def reference_precision_at_k(embeddings: torch.Tensor, movies: list, k: int) -> float:
    """Mean over reviews of the share of its ``k`` nearest *other* reviews (by cosine) that review the same film."""
    similarity = cosine_similarity_matrix(embeddings.double(), embeddings.double())
    similarity.fill_diagonal_(float("-inf"))  # a review is not its own neighbour
    nearest = similarity.topk(k, dim=1).indices  # (reviews, k), best first
    same = [[movies[j] == movies[i] for j in row] for i, row in enumerate(nearest.tolist())]
    return torch.tensor(same, dtype=torch.float64).mean().item()


def _precision_cases() -> list[tuple[str, torch.Tensor, list, int]]:
    """(where, embeddings, movies, k): clusters with noise, rows of very different lengths, k at both limits."""
    generator = torch.Generator().manual_seed(5)

    def clustered(sizes: list[int], dim: int, noise: float) -> torch.Tensor:
        centres = torch.randn(len(sizes), dim, generator=generator)
        rows = torch.cat([centres[c] + noise * torch.randn(size, dim, generator=generator)
                          for c, size in enumerate(sizes)])
        # Lengths from 0.1 to 10: a dot product would rank the long rows first, a cosine does not.
        return rows * torch.logspace(-1, 1, len(rows))[torch.randperm(len(rows), generator=generator)][:, None]

    twelve = clustered([3, 3, 3, 3], dim=8, noise=0.9)
    movies_twelve = [name for name in ("alien", "brazil", "casablanca", "dune") for _ in range(3)]
    ten = clustered([5, 3, 1, 1], dim=6, noise=0.8)
    movies_ten = ["heat"] * 5 + ["ran"] * 3 + ["up"] + ["jaws"]  # two films with one review each
    return [("12 reviews of 4 films, k=1", twelve, movies_twelve, 1),
            ("12 reviews of 4 films, k=2 (every other review of a film)", twelve, movies_twelve, 2),
            ("12 reviews of 4 films, k=11 (all other reviews)", twelve, movies_twelve, 11),
            ("10 reviews, two films with a single review, k=3", ten, movies_ten, 3)]


def _precision_mistakes(embeddings: torch.Tensor, movies: list, k: int) -> dict[str, float]:
    """What the usual mistakes return on this case, so that the report can name the one the learner made."""
    n = len(movies)
    cosine = cosine_similarity_matrix(embeddings.double(), embeddings.double())
    dot = embeddings.double() @ embeddings.double().T

    def precision(similarity, count, exclude_self=True, descending=True, divide_by=None):
        similarity = similarity.clone()
        if exclude_self:
            similarity.fill_diagonal_(float("-inf") if descending else float("inf"))
        nearest = similarity.topk(min(count, n - (1 if exclude_self else 0)), dim=1, largest=descending).indices
        hits = torch.tensor([[movies[j] == movies[i] for j in row] for i, row in enumerate(nearest.tolist())],
                            dtype=torch.float64).sum(dim=1)
        return (hits / (count if divide_by is None else divide_by)).mean().item()

    others = torch.tensor([sum(m == movie for m in movies) - 1 for movie in movies], dtype=torch.float64)
    similarity = cosine.clone().fill_diagonal_(float("-inf"))
    hits = torch.tensor([[movies[j] == movies[i] for j in row] for i, row in
                         enumerate(similarity.topk(k, dim=1).indices.tolist())], dtype=torch.float64).sum(dim=1)
    mistakes = {
        "the review itself is among its own nearest neighbours: leave it out (its cosine with itself is 1)":
            precision(cosine, k, exclude_self=False),
        "that ranks by dot product, and these rows have very different lengths: rank by cosine":
            precision(dot, k),
        "those are the k *least* similar reviews: sort by descending cosine": precision(cosine, k, descending=False),
        "that divides by the number of other reviews of the film (recall); precision@k divides by k":
            precision(cosine, k, divide_by=others.clamp(min=1)),
        "you left out the reviews whose film has no other review: average over every review":
            (hits[others > 0] / k).mean().item(),
        "that is a percentage: return a share between 0 and 1": 100 * precision(cosine, k),
    }
    if k + 1 <= n - 1:
        mistakes["that counts k + 1 neighbours"] = precision(cosine, k + 1, divide_by=k)
    return mistakes


def check_precision_at_k(precision_at_k) -> CheckReport:
    """``precision_at_k(embeddings, movies, k)``: same-movie precision@k, one float between 0 and 1."""
    report = CheckReport("Same-movie precision@k")
    if not report.answered(precision_at_k, "precision_at_k"):
        return report
    for where, embeddings, movies, k in _precision_cases():
        result = report.call(precision_at_k, embeddings.clone(), list(movies), k, name="precision_at_k")
        if result is Ellipsis:
            return report
        value = as_tensor(result)
        if value is None or value.numel() != 1:
            shape = "not a number" if value is None else f"{value.numel()} numbers"
            report.fail(f"{where}: return one number, the mean over all reviews; got {shape}")
            return report
        value, expected = value.item(), reference_precision_at_k(embeddings, movies, k)
        if abs(value - expected) < TOLERANCE:
            report.ok(f"{where}: {expected:.4f}")
            continue
        named = named_mistakes(value, _precision_mistakes(embeddings, movies, k),
                               lambda answer, wrong: abs(answer - wrong) < TOLERANCE, expected)
        hint = named[0] if named else "the value differs"
        report.fail(f"{where}: got {value:.4f}, expected {expected:.4f}: {hint}")
    return report
