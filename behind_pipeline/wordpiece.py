"""BERT's uncased WordPiece tokenizer written by hand (chapter 1): raw text to input_ids and back.

Each step matches what the Rust ``tokenizers`` library does for ``BertTokenizer``: ``BertNormalizer`` (clean,
pad CJK characters, strip accents, lowercase), ``BertPreTokenizer`` (split on whitespace and punctuation), the
``WordPiece`` model (greedy longest match with ``##`` continuations), the ``[CLS] A [SEP] B [SEP]`` template,
truncation, padding and the ``WordPiece`` decoder. Chapter 1 and its tests check it id for id against
``AutoTokenizer`` on the whole test split.
"""

import json
import os
import re
import string
import unicodedata

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
CONTINUATION = "##"
# The library finds special tokens in the raw text before normalizing it, so a typed "[SEP]" stays one token.
SPECIAL_TOKEN_PATTERN = re.compile("(" + "|".join(re.escape(token) for token in SPECIAL_TOKENS) + ")")
# BERT's limit on one word (after punctuation is split off): a longer one is [UNK] at once. It bounds the greedy
# search, which tries up to n(n+1)/2 candidates for n characters; it does not shorten inputs (see chapter 1).
MAX_INPUT_CHARS_PER_WORD = 100
MODEL_INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
# Unicode blocks of CJK ideographs: Chinese is written without spaces, so BERT makes each ideograph a word.
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def model_file(model_id: str, filename: str) -> str | None:
    """The path of one file of a model folder or Hub id (fetched into the Hugging Face cache), or None."""
    if os.path.isdir(model_id):
        path = os.path.join(model_id, filename)
        return path if os.path.exists(path) else None
    from huggingface_hub import hf_hub_download  # a Hub id (BTP_ONLINE=1)
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(model_id, filename)
    except EntryNotFoundError:
        return None


def load_vocab(model_id: str) -> dict[str, int]:
    """Token -> id, read as the fast tokenizer reads it: from ``tokenizer.json``, else from ``vocab.txt``.

    ``save_pretrained`` of a fast tokenizer writes only ``tokenizer.json`` (the table sits in its ``model.vocab``);
    BERT's original release is ``vocab.txt``, one token a line, the line number being the id.
    """
    if path := model_file(model_id, "tokenizer.json"):
        with open(path, encoding="utf-8") as handle:
            return dict(json.load(handle)["model"]["vocab"])
    if path := model_file(model_id, "vocab.txt"):
        with open(path, encoding="utf-8") as handle:
            return {line.rstrip("\n"): index for index, line in enumerate(handle)}
    raise FileNotFoundError(f"{model_id} has neither tokenizer.json nor vocab.txt")


def load_tokenizer_config(model_id: str) -> dict:
    """``tokenizer_config.json`` (class name, ``model_max_length``...), or {} for a folder without one."""
    if path := model_file(model_id, "tokenizer_config.json"):
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    return {}


def model_input_names(tokenizer_class: str | None) -> tuple[str, ...]:
    """The lists a tokenizer class returns by default: DistilBERT's has no ``token_type_ids``."""
    import transformers

    declared = getattr(transformers, tokenizer_class, None) if tokenizer_class else None
    return tuple(getattr(declared, "model_input_names", MODEL_INPUT_NAMES))


# --- 1. normalization (BertNormalizer) ------------------------------------------------------------------------


def is_control(char: str) -> bool:
    """Unicode "other" characters (Cc, Cf, Cs, Co, Cn); tab and newlines count as whitespace instead."""
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def is_whitespace(char: str) -> bool:
    """Tab, newlines and Unicode space separators (Zs, Zl, Zp), e.g. the no-break space U+00A0."""
    return char in "\t\n\r" or unicodedata.category(char) in ("Zs", "Zl", "Zp")


def clean_text(text: str) -> str:
    """Drop NUL, U+FFFD and control characters; turn every kind of whitespace into a plain space."""
    kept = (char for char in text if char not in "\x00\ufffd" and not is_control(char))
    return "".join(" " if is_whitespace(char) else char for char in kept)


def is_cjk(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in CJK_RANGES)


def pad_cjk_chars(text: str) -> str:
    """Put spaces around each CJK ideograph, so that each becomes a word of its own."""
    return "".join(f" {char} " if is_cjk(char) else char for char in text)


def strip_accents(text: str) -> str:
    """NFD splits "é" into "e" + a combining accent (category Mn); dropping the Mn marks leaves "e"."""
    return "".join(char for char in unicodedata.normalize("NFD", text) if unicodedata.category(char) != "Mn")


def normalize(text: str, lowercase: bool = True) -> str:
    """BertNormalizer in the library's order: clean, pad CJK, then (uncased models only) strip accents, lowercase."""
    text = pad_cjk_chars(clean_text(text))
    if lowercase:  # the uncased vocabulary has neither capitals nor accents
        # One character at a time, as the Rust library does: Python's str.lower() would turn a final capital
        # sigma into "ς", the library into "σ".
        text = "".join(char.lower() for char in strip_accents(text))
    return text


# --- 2. pre-tokenization (BertPreTokenizer) -------------------------------------------------------------------


def is_punctuation(char: str) -> bool:
    """ASCII symbols such as $ + < = > ^ ` | ~ count as punctuation too, as in BERT's original code."""
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def pre_tokenize(text: str) -> list[str]:
    """Split on whitespace (dropped) and punctuation (kept, each mark a word of its own)."""
    words, current = [], []
    for char in text:
        if char.isspace() or is_punctuation(char):
            if current:
                words.append("".join(current))
                current = []
            if not char.isspace():
                words.append(char)
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


# --- 3. the WordPiece model -----------------------------------------------------------------------------------


def wordpiece(word: str, vocab, unk_token: str = UNK, max_chars: int = MAX_INPUT_CHARS_PER_WORD) -> list[str]:
    """Greedy longest-match-first: take the longest vocabulary entry that starts the rest of the word.

    Pieces after the first carry the ``##`` prefix (they continue a word). If some position matches nothing,
    the whole word becomes one ``[UNK]``: BERT never mixes known pieces with an unknown remainder.
    """
    if len(word) > max_chars:
        return [unk_token]
    pieces, start = [], 0
    while start < len(word):
        prefix = CONTINUATION if start > 0 else ""
        for end in range(len(word), start, -1):  # longest candidate first
            if prefix + word[start:end] in vocab:
                pieces.append(prefix + word[start:end])
                start = end
                break
        else:
            return [unk_token]
    return pieces


# --- 4. the whole tokenizer -----------------------------------------------------------------------------------


class WordPieceTokenizer:
    """An uncased BERT tokenizer in plain Python, called like ``AutoTokenizer`` (lists, or tensors on request)."""

    def __init__(self, vocab: dict[str, int], lowercase: bool = True,
                 input_names: tuple[str, ...] = MODEL_INPUT_NAMES, model_max_length: int = 512):
        self.vocab = vocab
        self.id_to_token = {index: token for token, index in vocab.items()}
        self.lowercase = lowercase
        self.input_names = input_names  # which lists __call__ returns, as the library's model_input_names
        self.model_max_length = model_max_length  # what truncation=True cuts to when max_length is not given
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (vocab[t] for t in (PAD, UNK, CLS, SEP))
        self.special_ids = {vocab[token] for token in SPECIAL_TOKENS}

    @classmethod
    def from_pretrained(cls, model_id: str, lowercase: bool = True) -> "WordPieceTokenizer":
        """From a model folder or Hub id: the vocabulary, and which lists the model takes and how many tokens."""
        config = load_tokenizer_config(model_id)
        return cls(load_vocab(model_id), lowercase=lowercase,
                   input_names=model_input_names(config.get("tokenizer_class")),
                   model_max_length=config.get("model_max_length", 512))

    def tokenize(self, text: str) -> list[str]:
        """Text -> word pieces, without the [CLS]/[SEP] frame (a special token typed in the text is kept whole)."""
        tokens = []
        # re.split with a group returns the text between matches at even positions and the matches at odd ones.
        for position, part in enumerate(SPECIAL_TOKEN_PATTERN.split(text)):
            if position % 2:
                tokens.append(part)
            else:
                tokens += [piece for word in pre_tokenize(normalize(part, self.lowercase))
                           for piece in wordpiece(word, self.vocab)]
        return tokens

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [self.vocab.get(token, self.unk_id) for token in tokens]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.id_to_token[int(index)] for index in ids]

    def encode_one(self, text, text_pair=None, add_special_tokens=True, truncation=False, max_length=None):
        """One text (or pair) -> ``input_ids``, ``token_type_ids``, ``attention_mask`` as lists, before padding."""
        first = self.convert_tokens_to_ids(self.tokenize(text))
        second = self.convert_tokens_to_ids(self.tokenize(text_pair)) if text_pair is not None else None
        if truncation:
            # The budget for the text's own pieces: the special tokens are added after cutting, and they count.
            max_length = max_length if max_length is not None else self.model_max_length
            added = (3 if second is not None else 2) if add_special_tokens else 0
            first, second = truncate_longest_first(first, second, max_length - added)
        if add_special_tokens:
            # [CLS] A [SEP] (B [SEP]): [CLS] is the slot the classification head reads; [SEP] closes each segment.
            input_ids = [self.cls_id, *first, self.sep_id]
            token_type_ids = [0] * len(input_ids)
            if second is not None:
                input_ids += [*second, self.sep_id]
                token_type_ids += [1] * (len(second) + 1)
        else:
            input_ids = first + (second or [])
            token_type_ids = [0] * len(first) + [1] * len(second or [])
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": [1] * len(input_ids)}

    def __call__(self, texts, text_pair=None, add_special_tokens=True, padding=False, truncation=False,
                 max_length=None, return_tensors=None):
        """Like ``tokenizer(texts, ...)``: a string gives flat lists, a list of strings gives one list per text."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if single:  # like the library, which tests `if text_pair`: one text with "" as its pair is no pair
            pairs = [text_pair or None]
        else:  # in a batch, "" stays a pair with an empty second segment: [CLS] A [SEP] [SEP]
            pairs = list(text_pair) if text_pair is not None else [None] * len(texts)
        rows = [
            self.encode_one(text, pair, add_special_tokens, truncation, max_length)
            for text, pair in zip(texts, pairs, strict=True)
        ]
        if padding in (True, "longest", "max_length"):
            width = max_length if padding == "max_length" else max(len(row["input_ids"]) for row in rows)
            rows = [self.pad(row, width) for row in rows]
        encoding = {key: [row[key] for row in rows] for key in self.input_names}
        if single:
            encoding = {key: value[0] for key, value in encoding.items()}
        if return_tensors == "pt":
            import torch

            encoding = {key: torch.tensor(value if not single else [value]) for key, value in encoding.items()}
        return encoding

    def pad(self, row: dict[str, list[int]], width: int) -> dict[str, list[int]]:
        """Right-pad to ``width``: [PAD] ids, type 0, and attention_mask 0 so the model ignores those positions."""
        missing = max(width - len(row["input_ids"]), 0)
        return {
            "input_ids": row["input_ids"] + [self.pad_id] * missing,
            "token_type_ids": row["token_type_ids"] + [0] * missing,
            "attention_mask": row["attention_mask"] + [0] * missing,
        }

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Ids -> text as the WordPiece decoder writes it: ``##`` pieces glued, no space before . , ! ?"""
        tokens = [t for t in self.convert_ids_to_tokens(ids) if not (skip_special_tokens and t in SPECIAL_TOKENS)]
        return "".join(decode_piece(token, first=index == 0) for index, token in enumerate(tokens))


def decode_piece(token: str, first: bool) -> str:
    """One token's share of the decoded string (the library cleans each piece on its own, so "don ' t" stays)."""
    if not first:
        token = token[len(CONTINUATION):] if token.startswith(CONTINUATION) else " " + token
    for dirty, clean in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        token = token.replace(dirty, clean)
    return token


def truncate_longest_first(first: list[int], second: list[int] | None, budget: int):
    """Cut ids to ``budget`` in all, as the library's ``longest_first`` does: a pair loses from its longer side.

    When both sides are too long they are cut to half the budget each (the odd one goes to the longer side).
    """
    if second is None:
        return first[:budget], None
    if len(first) + len(second) <= budget:
        return first, second
    short, long = sorted((len(first), len(second)))
    long = max(short, budget - short) if short <= budget else short
    if short + long > budget:
        short, long = budget // 2, budget // 2 + budget % 2
    keep_first, keep_second = (long, short) if len(first) > len(second) else (short, long)
    return first[:keep_first], second[:keep_second]


def token_splits(tokenizer: WordPieceTokenizer, text: str) -> list[list[str]]:
    """Pieces grouped by the word they came from (a figure colours each word's pieces alike)."""
    return [wordpiece(word, tokenizer.vocab) for word in pre_tokenize(normalize(text, tokenizer.lowercase))]
