"""The tiny random BERT classifiers of the unit tests: one builder, each test's sizes given as arguments.

A BERT of width 12 to 32 runs in milliseconds and has every part the book's code touches (embeddings, attention,
pooler, head), so a test exercises code paths, not what a model learned. The weights come from
``torch.manual_seed(seed)``: the same arguments give the same model.
"""

import torch
from transformers import BertConfig, BertForSequenceClassification


def tiny_bert_classifier(vocab_size: int, *, hidden: int = 16, layers: int = 1, heads: int = 2,
                         intermediate: int | None = None, max_positions: int = 512, num_labels: int = 2,
                         seed: int = 0, train_mode: bool = False) -> BertForSequenceClassification:
    """A random ``BertForSequenceClassification``, in eval mode unless ``train_mode`` (dropout on, to train it).

    ``intermediate`` (the feed-forward width) defaults to twice ``hidden``; ``max_positions`` to BERT's 512.
    """
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate or 2 * hidden,
                        max_position_embeddings=max_positions, num_labels=num_labels)
    model = BertForSequenceClassification(config)
    return model.train() if train_mode else model.eval()
