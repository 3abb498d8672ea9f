"""A local stand-in for the online classifier: DistilBERT-shaped, random weights, made in seconds, no network.

    python tools/online_stand_in.py            # writes .cache/models/online-stand-in, prints its folder
    BTP_CLASSIFIER_ID=.cache/models/online-stand-in make lab

With ``BTP_ONLINE=1`` the book loads ``distilbert-base-uncased-finetuned-sst-2-english`` from the Hub: another
architecture (no ``.bert``, no token types, a ReLU ``pre_classifier`` head), other label names
(NEGATIVE / POSITIVE) and no ``training_summary.json``. This folder has all of those differences but tiny random
weights, so ``tests/test_online_mode.py`` can run the chapters' code paths the way an online reader would,
offline. Its predictions are meaningless; only the code paths matter.

The same for chapter 8's generator: online it is ``gpt2`` (a 1,024-token context, another width, no
``training_summary.json``); ``make_generator_stand_in`` writes a random GPT-2 with those differences and the local
byte-level tokenizer to ``.cache/models/online-generator-stand-in`` (pass it as ``BTP_GENERATOR_ID``).
"""

import sys
from pathlib import Path

from behind_pipeline import paths

STAND_IN_DIR = paths.MODELS_DIR / "online-stand-in"
GENERATOR_STAND_IN_DIR = paths.MODELS_DIR / "online-generator-stand-in"


def make_stand_in(folder: Path = STAND_IN_DIR) -> Path:
    """Write a 2-layer DistilBERT classifier (random weights, seed 0) and the uncased WordPiece tokenizer."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    from behind_pipeline.models import encoder_id

    if (folder / "model.safetensors").exists():
        return folder
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                              id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    partial = folder.with_name(folder.name + ".partial")
    DistilBertForSequenceClassification(config).save_pretrained(partial)
    # distilbert-base-uncased uses the same 30,522-piece uncased vocabulary as all-MiniLM-L6-v2.
    DistilBertTokenizerFast.from_pretrained(encoder_id()).save_pretrained(partial)
    partial.rename(folder)
    return folder


def make_generator_stand_in(folder: Path = GENERATOR_STAND_IN_DIR) -> Path:
    """Write a 2-layer GPT-2 (random weights, seed 0, context 1,024, width 96) with the local tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from behind_pipeline.models import GENERATOR_DIR

    if (folder / "model.safetensors").exists():
        return folder
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(GENERATOR_DIR)
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=96, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos)
    partial = folder.with_name(folder.name + ".partial")
    GPT2LMHeadModel(config).save_pretrained(partial)
    tokenizer.model_max_length = 1024  # gpt2's context, not the tiny model's 128
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


if __name__ == "__main__":
    paths.configure_environment()
    print(make_stand_in().relative_to(paths.PROJECT_ROOT))
    sys.exit(0)
