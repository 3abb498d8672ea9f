"""What a split that ignores the movies leaks, measured (chapter 9).

The corpus has about 25 reviews per movie, and the reviews of one movie tend to agree. A random split puts
reviews of nearly every test movie into train; :func:`group_majority_predictions` measures what that alone is
worth, with a "model" that never reads the review. :func:`halves_by_group` builds the controlled comparison:
the same test reviews, scored by a model trained with or without the other half of their movies' reviews.
"""

import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence


def shared_groups(train_groups: Sequence[Hashable], test_groups: Sequence[Hashable]) -> set:
    """The groups (movies) that have items in both sequences."""
    return set(train_groups) & set(test_groups)


def group_majority_predictions(train_groups: Sequence[Hashable], train_labels: Sequence[int],
                               test_groups: Sequence[Hashable]) -> list[int]:
    """For each test item, the most frequent training label of its group; the overall one if the group is unseen.

    Ties go to the label met first. ``group_majority_predictions(["a", "a", "b"], [1, 1, 0], ["a", "c"]) -> [1, 1]``
    """
    by_group = defaultdict(Counter)
    for group, label in zip(train_groups, train_labels, strict=True):
        by_group[group][int(label)] += 1
    overall = Counter(int(label) for label in train_labels).most_common(1)[0][0]
    return [by_group[group].most_common(1)[0][0] if group in by_group else overall for group in test_groups]


def halves_by_group(groups: Sequence[Hashable], seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices cut in two inside every group: (first, second), with ``len(group) // 2`` of each group in first.

    Each group's indices are shuffled with ``seed`` before the cut; both lists are returned in increasing order.
    A group with one item goes to ``second``.
    """
    members = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    shuffler = random.Random(seed)
    first, second = [], []
    for indices in members.values():  # groups in order of first appearance: the same cut on every run
        shuffler.shuffle(indices)
        first += indices[:len(indices) // 2]
        second += indices[len(indices) // 2:]
    return sorted(first), sorted(second)
