"""Text generation by hand: byte-level BPE, the causal-LM loss, greedy and sampling loops, the KV cache, left padding.

Chapter 8 builds each piece on one small example, then checks it against the library on real data: the hand
encoder against the fast tokenizer, the loss against the model's own ``loss``, and every loop against
``model.generate(...)``, token for token.
"""

import json
import math
import re
import unicodedata
from functools import cache

import torch
import torch.nn.functional as F

# Letters and numbers all sit in Unicode's first four planes; the planes above hold unassigned code points, tags,
# variation selectors and private use, so the scan stops there.
_LAST_LETTER_PLANE_END = 0x3FFFF


def _unicode_class(category: str) -> str:
    """A regex character class body (ranges) of every character whose Unicode category starts with ``category``."""
    ranges, start = [], None
    for code in range(_LAST_LETTER_PLANE_END + 2):
        inside = code <= _LAST_LETTER_PLANE_END and unicodedata.category(chr(code)).startswith(category)
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
            start = None
    return "".join(ranges)


@cache
def gpt2_split() -> re.Pattern:
    """GPT-2's pre-tokenizer regex (``tokenizers``' ByteLevel pre-tokenizer uses the same one).

    ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``: contractions, runs of
    letters, of digits, of other symbols, each with at most one leading space, and runs of whitespace. Python's
    ``re`` has no ``\\p{L}`` (letter) or ``\\p{N}`` (number), so we spell those classes out from ``unicodedata``.
    """
    letters, numbers = _unicode_class("L"), _unicode_class("N")
    return re.compile(rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{letters}]+| ?[{numbers}]+| ?[^\s{letters}{numbers}]+"""
                      r"""|\s+(?!\S)|\s+""")


# ---------------------------------------------------------------------------------------------------------------
# Byte-level BPE


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to printable characters: ``{32: 'Ġ', 65: 'A', 10: 'Ċ', ...}``.

    Printable ASCII and Latin-1 bytes stand for themselves; the others (space, newline, control bytes) are shifted
    to characters from 256 on, so every token is a visible string and a space shows as ``Ġ``.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shift)
            shift += 1
    return table


def bpe_tables(tokenizer) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """(vocab, merge ranks) of a byte-level BPE tokenizer, read from its ``tokenizer.json``.

    ``ranks[("Ġ", "t")] == 0`` means that merge was learned first, so it is applied first.
    """
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]
    return model["vocab"], {pair: rank for rank, pair in enumerate(merges)}


def bpe_word(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the adjacent pair learned earliest, again and again: ``['Ġ','t','h','e'] -> ['Ġthe']``."""
    while len(symbols) > 1:
        best = min(zip(symbols, symbols[1:], strict=False), key=lambda pair: ranks.get(pair, math.inf))
        if best not in ranks:
            break  # no pair left that the tokenizer learned to merge
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def encode_by_hand(text: str, vocab: dict[str, int], ranks: dict[tuple[str, str], int]) -> list[int]:
    """Byte-level BPE: split with GPT-2's regex, spell each piece in bytes, merge, look the pieces up."""
    byte_chars = bytes_to_unicode()
    ids = []
    for piece in gpt2_split().findall(text):
        symbols = [byte_chars[byte] for byte in piece.encode("utf-8")]  # every byte has a symbol: no [UNK]
        ids.extend(vocab[symbol] for symbol in bpe_word(symbols, ranks))
    return ids


# ---------------------------------------------------------------------------------------------------------------
# The causal language model's loss


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each position's logits against the *next* token: labels shifted by one."""
    predictions = logits[:, :-1]  # (batch, seq - 1, vocab): position t predicts token t + 1
    targets = input_ids[:, 1:]  # (batch, seq - 1): the last position has no next token to predict
    return F.cross_entropy(predictions.flatten(0, 1).float(), targets.flatten())


# ---------------------------------------------------------------------------------------------------------------
# Greedy decoding, without and with the KV cache


@torch.inference_mode()
def greedy_by_hand(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id=None,
                   process=None) -> torch.Tensor:
    """Greedy decoding of one prompt: run the whole text, take the argmax at the last position, append, repeat.

    ``process(ids, logits) -> logits`` (optional) changes the next-token logits first, as a logits processor does.
    """
    ids = input_ids  # (1, prompt)
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids).logits[:, -1].float()  # (1, vocab): the next token's logits
        if process is not None:
            logits = process(ids, logits)
        next_id = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
        ids = torch.cat([ids, next_id], dim=-1)  # (1, length + 1)
        if next_id.item() == eos_token_id:
            break
    return ids


@torch.inference_mode()
def greedy_with_cache(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id=None) -> torch.Tensor:
    """Greedy decoding with the KV cache: the prompt runs once, then each step feeds only the newest token."""
    ids = input_ids  # (1, prompt)
    outputs = model(input_ids=ids, use_cache=True)  # keys and values of every layer for the prompt
    for step in range(max_new_tokens):
        next_id = outputs.logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1)
        ids = torch.cat([ids, next_id], dim=-1)
        if next_id.item() == eos_token_id or step == max_new_tokens - 1:
            break
        # One token in; the cache supplies the keys and values of all earlier ones (and their positions).
        outputs = model(input_ids=next_id, past_key_values=outputs.past_key_values, use_cache=True)
    return ids


# ---------------------------------------------------------------------------------------------------------------
# Sampling: logits transformations in the library's order, then one draw


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits: below 1 sharpens the distribution, above 1 flattens it."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest logits of each row (and any tied with the k-th); the rest become -inf."""
    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]  # (batch, 1)
    return logits.masked_fill(logits < kth, -math.inf)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose probabilities add up to at least ``top_p`` (the nucleus); the rest -inf.

    As the library does it: sort from the least likely up and drop tokens while their cumulative probability stays
    at or below ``1 - top_p``. The token that crosses the threshold stays, and so does the most likely one.
    """
    sorted_logits, order = torch.sort(logits, descending=False)  # (batch, vocab), least likely first
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (batch, vocab)
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted[..., -1:] = False  # always keep the most likely token
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, -math.inf)


def warp_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p: the order ``generate`` applies them in (each only when it is active)."""
    if temperature != 1.0:
        logits = apply_temperature(logits, temperature)
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return logits


@torch.inference_mode()
def sample_by_hand(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None, eos_token_id=None) -> torch.Tensor:
    """Sampling with the KV cache: warp the next-token logits, softmax, draw one token with ``torch.multinomial``.

    Draws from PyTorch's global generator, as ``generate`` does: seed it the same way to get the same tokens.
    """
    ids = input_ids  # (1, prompt)
    outputs = model(input_ids=ids, use_cache=True)
    for step in range(max_new_tokens):
        scores = warp_logits(outputs.logits[:, -1].float(), temperature, top_k, top_p)  # (1, vocab)
        probs = scores.softmax(dim=-1)  # -inf logits get probability 0
        next_id = torch.multinomial(probs, num_samples=1)  # (1, 1)
        ids = torch.cat([ids, next_id], dim=-1)
        if next_id.item() == eos_token_id or step == max_new_tokens - 1:
            break
        outputs = model(input_ids=next_id, past_key_values=outputs.past_key_values, use_cache=True)
    return ids


# ---------------------------------------------------------------------------------------------------------------
# Batches: left padding, attention mask and position ids


def left_pad(token_lists: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad every prompt on the left to the longest one, so each row's last position is its last real token."""
    longest = max(len(ids) for ids in token_lists)
    input_ids = torch.tensor([[pad_token_id] * (longest - len(ids)) + list(ids) for ids in token_lists])
    attention_mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in token_lists])
    return {"input_ids": input_ids, "attention_mask": attention_mask}  # (batch, longest) each


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each real token's position counted from its row's first real token: ``[0, 0, 1, 1, 1] -> [0, 0, 0, 1, 2]``."""
    positions = attention_mask.long().cumsum(dim=-1) - 1  # (batch, seq)
    return positions.masked_fill(attention_mask == 0, 0)  # pads get 0, as in generate(); the mask hides them


@torch.inference_mode()
def greedy_batch_by_hand(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                         pad_token_id: int, eos_token_id=None) -> torch.Tensor:
    """Greedy decoding of a left-padded batch: mask and position ids grow by one column each step.

    A row that produced EOS gets ``pad_token_id`` from then on, as in ``generate``; the loop stops when every row has.
    """
    ids, mask = input_ids, attention_mask  # (batch, length) each
    finished = torch.zeros(len(ids), dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=position_ids_from_mask(mask)).logits[:, -1]  # (batch, vocab)
        next_ids = logits.argmax(dim=-1).masked_fill(finished, pad_token_id)  # (batch,)
        ids = torch.cat([ids, next_ids[:, None]], dim=-1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        if eos_token_id is not None:
            finished |= next_ids == eos_token_id
            if finished.all():
                break
    return ids


def new_tokens(sequences: torch.Tensor, prompt_length: int, eos_token_id=None) -> list[list[int]]:
    """The generated part of each row, cut after its first EOS (the pads ``generate`` adds after it dropped)."""
    rows = []
    for row in sequences[:, prompt_length:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# What the KV cache saves


@torch.inference_mode()
def decoding_step_seconds(model, input_ids: torch.Tensor, max_new_tokens: int, use_cache: bool) -> list[float]:
    """Seconds of each greedy step (forward pass and argmax), with or without the KV cache."""
    import time

    ids, past, seconds = input_ids, None, []
    for _ in range(max_new_tokens):
        start = time.perf_counter()
        if use_cache:
            outputs = model(input_ids=ids if past is None else ids[:, -1:], past_key_values=past, use_cache=True)
            past = outputs.past_key_values
        else:
            outputs = model(input_ids=ids, use_cache=False)  # the whole text again, every step
        next_id = outputs.logits[:, -1].argmax(dim=-1, keepdim=True)
        seconds.append(time.perf_counter() - start)
        ids = torch.cat([ids, next_id], dim=-1)
    return seconds


# ---------------------------------------------------------------------------------------------------------------
# Beam search


@torch.inference_mode()
def beam_search_by_hand(model, input_ids: torch.Tensor, num_beams: int, max_new_tokens: int, eos_token_id=None,
                        length_penalty: float = 1.0) -> torch.Tensor:
    """Beam search of one prompt as ``generate(num_beams=...)`` runs it with its defaults (``early_stopping=False``).

    Each step scores every (beam, next token) pair by its summed log-probability and keeps the ``2 * num_beams``
    best. Of those, the ones among the first ``num_beams`` that end (EOS, or the last step) become finished
    hypotheses scored ``sum / new_tokens ** length_penalty``; the ``num_beams`` best that do not end run on. The
    search stops at ``max_new_tokens``, or once ``num_beams`` hypotheses are finished and the best running beam,
    scored by its length so far, cannot beat the worst of them. It returns the best finished hypothesis.
    Without a cache: each step runs the beams' whole texts (``generate`` reorders a KV cache instead).
    """
    running = input_ids.repeat(num_beams, 1)  # (beams, length): all copies of the prompt at first
    # Only beam 0 counts at the first step, or the copies would fill the beams with the same continuations.
    running_scores = torch.full((num_beams,), -1e9)
    running_scores[0] = 0.0
    finished: list[tuple[float, torch.Tensor]] = []  # (length-penalized score, ids), best first
    keep = 2 * num_beams  # enough candidates that num_beams of them can run on even if some end
    for step in range(1, max_new_tokens + 1):
        logits = model(input_ids=running).logits[:, -1].float()  # (beams, vocab)
        scores = logits.log_softmax(dim=-1) + running_scores[:, None]  # (beams, vocab): summed log-probabilities
        vocab = scores.shape[-1]
        top_scores, flat = scores.flatten().topk(keep)  # (keep,) each, best first
        beams, tokens = flat // vocab, flat % vocab
        candidates = torch.cat([running[beams], tokens[:, None]], dim=-1)  # (keep, length + 1)
        ends = tokens == eos_token_id if eos_token_id is not None else torch.zeros(keep, dtype=torch.bool)
        if step == max_new_tokens:
            ends[:] = True  # the length limit ends every candidate
        for rank in range(num_beams):  # only the num_beams best candidates may become hypotheses
            if ends[rank]:
                finished.append((top_scores[rank].item() / step ** length_penalty, candidates[rank]))
        finished = sorted(finished, key=lambda hypothesis: hypothesis[0], reverse=True)[:num_beams]
        if ends.all():
            break
        alive = top_scores.masked_fill(ends, -1e9).topk(num_beams).indices  # best first
        running, running_scores = candidates[alive], top_scores[alive]
        best_running = running_scores[0].item() / step ** length_penalty
        if len(finished) == num_beams and best_running <= finished[-1][0]:
            break  # no running beam can enter the finished ones any more
    return finished[0][1][None]  # (1, length)


@torch.inference_mode()
def sequence_log_prob(model, ids: torch.Tensor, prompt_length: int) -> float:
    """Sum of the log-probabilities the model gives each new token of ``ids`` (1, length): what beam search ranks."""
    log_probs = model(input_ids=ids).logits[0, :-1].float().log_softmax(dim=-1)  # (length - 1, vocab)
    picked = log_probs[torch.arange(len(log_probs)), ids[0, 1:]]  # (length - 1,): each next token's log-prob
    return picked[prompt_length - 1:].sum().item()


# ---------------------------------------------------------------------------------------------------------------
# Logits processors behind two stopping options of generate()


def min_new_tokens_processor(prompt_length: int, min_new_tokens: int, eos_token_id: int):
    """``process(ids, logits)`` for :func:`greedy_by_hand`: EOS gets -inf until ``min_new_tokens`` are generated."""
    def process(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] - prompt_length < min_new_tokens:
            logits = logits.clone()
            logits[:, eos_token_id] = -math.inf
        return logits
    return process


def no_repeat_ngram_processor(ngram_size: int):
    """``process(ids, logits)``: -inf for every token that would repeat an n-gram already in the text (prompt too).

    The last ``ngram_size - 1`` tokens are the start of the next n-gram; each token that followed the same start
    earlier in the row is banned.
    """
    def process(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        for row, tokens in enumerate(ids.tolist()):
            if len(tokens) + 1 < ngram_size:
                continue  # not enough text for a whole n-gram yet
            start = tuple(tokens[len(tokens) - ngram_size + 1:])  # () when ngram_size is 1
            banned = {tokens[i + ngram_size - 1] for i in range(len(tokens) - ngram_size + 1)
                      if tuple(tokens[i:i + ngram_size - 1]) == start}
            logits[row, sorted(banned)] = -math.inf
        return logits
    return process


# ---------------------------------------------------------------------------------------------------------------
# The KV cache's memory


def kv_cache_bytes_per_token(config, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the KV cache holds per token of text: a key and a value vector of every head, in every layer.

    ``2 * n_layer * n_head * head_dim * bytes``, and ``n_head * head_dim`` is the model's width for GPT-2.
    """
    head_dim = config.n_embd // config.n_head
    return 2 * config.n_layer * config.n_head * head_dim * torch.finfo(dtype).bits // 8


def cache_tensor_bytes(cache) -> int:
    """Bytes of every key and value tensor a ``DynamicCache`` holds (``cache.layers[i].keys`` and ``.values``)."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
