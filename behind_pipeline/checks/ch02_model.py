"""Checkers for chapter 2's exercises: a BERT's size from its config, the attention block, the whole encoder,
left padding with its position ids.

Each checker tries the learner's code on all-MiniLM-L6-v2 and on small BERTs of other shapes (hidden size 48, 4 or
6 heads, 2 or 3 layers, 3 token types, pad id 1, LayerNorm eps 0.1) whose weights are redrawn large enough that
every mistake shows: BERT's own initialisation (std 0.02, zero biases, LayerNorm 1 and 0) would make attention
nearly uniform and the biases zero, so a missing 1/sqrt(d_head) or a forgotten bias would go unnoticed, and the
usual eps of 1e-12 would hide a hard-coded one.
"""

import copy
import functools
import inspect
import math
import operator
import sys
from collections.abc import Mapping

import torch

from behind_pipeline import bert_by_hand
from behind_pipeline.checks._core import CheckReport, as_tensor, course_encoder, named_mistakes

TOLERANCE = 1e-4
# The package's own versions of what exercises 2 and 3 ask for: an answer may use the chapter's small pieces
# (linear, split_heads, merge_heads, layer_norm, gelu, embeddings, additive_mask), not these.
ATTENTION_ANSWERS = ("attention", "scaled_dot_product_attention", "layer", "encoder_forward")
ENCODER_ANSWERS = ("attention", "scaled_dot_product_attention", "feed_forward", "layer", "encoder_forward")
# Reviews of different lengths, so a right-padded batch of them has rows with 0, some and much padding.
REVIEWS = [
    "The plot is thin, but the actors make it sing.",
    "Dull.",
    "A gorgeous, moving film with a script that keeps surprising you until the very last scene.",
    "Two hours of my life I will never get back.",
]


def _never_raises(checker):
    """A checker reports; it does not crash the learner's notebook, whatever the answer looks like."""

    @functools.wraps(checker)
    def safe(*args, **kwargs) -> CheckReport:
        try:
            return checker(*args, **kwargs)
        except Exception as error:  # an answer shaped in a way no branch foresaw still gets a message
            report = CheckReport(checker.__name__.removeprefix("check_").replace("_", " "))
            report.fail(f"could not grade this answer ({type(error).__name__}: {error}): check what it returns")
            return report

    return safe


def _check_each_case(report: CheckReport, function, name: str, cases, check_case) -> CheckReport:
    """``check_case(report, function, case)`` for each of ``cases()``, each case writing its own lines; the loop ends
    once ``function`` turns out unwritten (a stub, or a body that returns None), which every later case would repeat.
    """
    if not report.answered(function, name):
        return report
    for case in cases():
        check_case(report, function, case)
        if any("still `...`" in line or "returned None" in line for line in report.lines):
            break
    return report


def _call_watching(report: CheckReport, function, arguments: tuple, name: str, answers: tuple[str, ...]):
    """``report.call(function, *arguments)``, noting which of the package's ``answers`` ran during the call.

    Those functions are the exercise's answer in the package: an answer that calls one of them (however it was
    imported) has not built anything. Returns (result or Ellipsis, names of the answers that ran).
    """
    watched = {inspect.unwrap(getattr(bert_by_hand, answer)).__code__: answer for answer in answers}
    ran: list[str] = []

    def watch(frame, event, _):
        if event == "call" and frame.f_code in watched and watched[frame.f_code] not in ran:
            ran.append(watched[frame.f_code])

    def watched_call(*args):
        previous = sys.getprofile()
        sys.setprofile(watch)
        try:
            return function(*args)
        finally:
            sys.setprofile(previous)

    return report.call(watched_call, *arguments, name=name), ran


# --- models the checkers run ------------------------------------------------------------------------------------

@functools.cache
def encoder_tokenizer():
    """all-MiniLM-L6-v2's tokenizer (the encoder's, in both modes), loaded once."""
    from transformers import AutoTokenizer

    from behind_pipeline.models import encoder_id

    return AutoTokenizer.from_pretrained(encoder_id())


@functools.cache
def tiny_bert(num_attention_heads: int = 4, num_hidden_layers: int = 2):
    """A small ``BertModel`` unlike all-MiniLM-L6-v2 in every size, with every parameter redrawn (seed 2).

    The weights depend on the sizes only, so the 4-head and 6-head models share them: same weights, other heads.
    """
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=48, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=num_attention_heads, intermediate_size=80, max_position_embeddings=32,
                        type_vocab_size=3, pad_token_id=1, layer_norm_eps=0.1)
    model = BertModel(config).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("LayerNorm.weight"):
                parameter.copy_(1 + 0.5 * noise)
            elif parameter.dim() == 1:  # biases and LayerNorm shifts
                parameter.copy_(0.5 * noise)
            elif name.startswith("embeddings."):
                parameter.copy_(noise)
            else:  # (out, in) matrices: scores of a few units, so softmax is neither uniform nor one-hot
                parameter.copy_(2 * noise / math.sqrt(parameter.shape[1]))
    return model


def _tiny_inputs(seed: int, lengths: list[int], vocab_size: int = 64, pad_token_id: int = 1):
    """Right-padded random ids (never the pad id) with token types 0, 1 and 2, for the tiny BERTs."""
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    input_ids = torch.full((len(lengths), longest), pad_token_id)
    attention_mask = torch.zeros(len(lengths), longest, dtype=torch.long)
    token_type_ids = torch.zeros(len(lengths), longest, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(2, vocab_size, (length,), generator=generator)
        attention_mask[row, :length] = 1
        token_type_ids[row, length // 2:length] = 1 + row % 2  # a second segment, type 1 or 2
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def _encoder_batch():
    tokenizer = encoder_tokenizer()
    return dict(tokenizer(REVIEWS, padding=True, return_tensors="pt"))


def _max_diff(value: torch.Tensor, expected: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """Largest |value - expected| (over the positions ``where`` is True, when given), in float64."""
    diff = (value.double() - expected.double()).abs()
    return diff[where].max().item() if where is not None else diff.max().item()


def _close(value: torch.Tensor | None, expected: torch.Tensor, where=None) -> bool:
    return value is not None and value.shape == expected.shape and _max_diff(value, expected, where) < TOLERANCE


# --- exercise 1: parameters from the config ---------------------------------------------------------------------

def _parameter_configs():
    from transformers import BertConfig

    return (
        ("all-MiniLM-L6-v2", BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                                        num_attention_heads=12, intermediate_size=1536)),
        ("bert-base-uncased", BertConfig()),
        ("a 1-layer BERT with 3 token types and intermediate 100",
         BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=100,
                    max_position_embeddings=128, type_vocab_size=3)),
    )


def _library_parameters(config) -> int:
    from transformers import BertModel

    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        return sum(p.numel() for p in BertModel(config).parameters())


def _parameter_mistakes(config, expected: int) -> dict[str, int]:
    """What a typical wrong formula gives for ``config``, keyed by the hint for it (a formula that gives
    ``expected`` for this config is no mistake here: ``named_mistakes`` leaves it out)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    one_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h
    return {
        "the pooler is missing: BertModel ends with pooler.dense (hidden -> hidden, with bias)": expected - (h * h + h),
        "the LayerNorms are missing (a weight and a bias of hidden_size each: 2 per layer, 1 after the embeddings)":
            expected - 2 * 2 * h * layers - 2 * h,
        "the layers' LayerNorms are missing (2 per layer, weight and bias each)": expected - 2 * 2 * h * layers,
        "the embeddings' LayerNorm is missing (weight and bias of hidden_size)": expected - 2 * h,
        "the biases are missing: every Linear has one per output unit": expected - layers * (4 * h + i + h) - h,
        "the position table is missing (max_position_embeddings rows of hidden_size)":
            expected - config.max_position_embeddings * h,
        "the token-type table is missing (type_vocab_size rows of hidden_size)": expected - config.type_vocab_size * h,
        "only one layer is counted: multiply by num_hidden_layers": expected - (layers - 1) * one_layer,
        "the token-type table has config.type_vocab_size rows, not 2": expected + (2 - config.type_vocab_size) * h,
        "the word table has config.vocab_size rows, not 30,522": expected + (30522 - config.vocab_size) * h,
        "the position table has config.max_position_embeddings rows, not 512":
            expected + (512 - config.max_position_embeddings) * h,
        "the feed-forward size is config.intermediate_size, which need not be 4 * hidden_size":
            expected + layers * (2 * h + 1) * (4 * h - i),
    }


@_never_raises
def check_bert_parameter_count(bert_parameter_count) -> CheckReport:
    """``bert_parameter_count(config)``: parameters of ``BertModel(config)``, embeddings to pooler."""
    report = CheckReport("Parameters of a BERT from its config")
    for name, config in _parameter_configs():
        answer = report.call(bert_parameter_count, config, name="bert_parameter_count")
        if answer is Ellipsis:
            return report
        count = report.tensor(answer, f"{name}: the count", shape=())
        if count is None:
            continue
        expected = _library_parameters(config)
        got = count.item()
        if got == expected:
            report.ok(f"{name}: {expected:,} parameters, as BertModel(config) has")
        elif got != int(got):
            report.fail(f"{name}: {got} is not a whole number: parameters are counted, not estimated")
        elif named := named_mistakes(int(got), _parameter_mistakes(config, expected), operator.eq, expected):
            report.fail(f"{name}: {int(got):,}: {named[0]}")
        else:
            report.fail(f"{name}: got {int(got):,}, BertModel(config) has {expected:,} "
                        f"({'more' if got < expected else 'fewer'} than you count)")
    return report


# --- exercise 2: the attention block ----------------------------------------------------------------------------

def _attention_cases():
    """(description, weights, prefix, config, hidden, attention_mask) for each try of the attention block."""
    encoder = course_encoder()
    batch = _encoder_batch()
    with torch.no_grad():
        hidden = encoder(**batch, output_hidden_states=True).hidden_states[3]  # the input of layer 3
    four, six = tiny_bert(4), tiny_bert(6)
    generator = torch.Generator().manual_seed(3)
    # A transposed view, not a contiguous tensor: code that calls .view() on its input must cope with both.
    tiny_hidden = torch.randn(7, 3, 48, generator=generator).transpose(0, 1)  # (batch 3, seq 7, hidden 48)
    left = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7, [0] * 6 + [1]])  # one row with a single real token
    right = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7, [1] + [0] * 6])
    return (
        ("all-MiniLM-L6-v2 layer 3, 12 heads, right padding", encoder.state_dict(), "encoder.layer.3.attention",
         encoder.config, hidden, batch["attention_mask"]),
        ("a BERT of hidden size 48, 4 heads, left padding", four.state_dict(), "encoder.layer.1.attention",
         four.config, tiny_hidden, left),
        ("the same weights read as 6 heads, right padding", six.state_dict(), "encoder.layer.0.attention",
         six.config, tiny_hidden.contiguous(), right),
    )


def _attention_variants(hidden, weights, prefix, config, mask) -> dict[str, torch.Tensor]:
    """The probabilities typical mistakes give, keyed by the hint that names each, checked in this order."""
    heads, hidden_size = config.num_attention_heads, hidden.shape[-1]
    projections = [bert_by_hand.linear(hidden, weights, f"{prefix}.self.{name}") for name in ("query", "key")]
    query, key = (bert_by_hand.split_heads(p, heads) for p in projections)
    scores = query @ key.transpose(-2, -1)  # (batch, heads, seq, seq), not yet scaled
    batch, seq, _ = hidden.shape
    query_t, key_t = (p.reshape(batch, heads, seq, hidden_size // heads) for p in projections)
    return {
        "the scores are not scaled: divide Q K^T by sqrt(d_head)": torch.softmax(scores + mask, dim=-1),
        "the scores are divided by sqrt(hidden_size): divide by sqrt(d_head) = sqrt(hidden_size / heads)":
            torch.softmax(scores / math.sqrt(hidden_size) + mask, dim=-1),
        "the heads mix tokens: view as (batch, seq, heads, d_head), then .transpose(1, 2); a straight view to "
        "(batch, heads, seq, d_head) has the right shape and the wrong values":
            torch.softmax(query_t @ key_t.transpose(-2, -1) / math.sqrt(hidden_size // heads) + mask, dim=-1),
    }


def _check_attention_case(report, attention_block, case) -> None:
    where, weights, prefix, config, hidden, attention_mask = case
    batch, seq, hidden_size = hidden.shape
    heads = config.num_attention_heads
    arguments = (hidden.clone(), weights, prefix, config, attention_mask.clone())
    result, used = _call_watching(report, attention_block, arguments, "attention_block", ATTENTION_ANSWERS)
    if result is Ellipsis:
        return
    if used:
        report.fail(f"{where}: attention_block calls bert_by_hand.{used[0]}, the book's own answer: write the steps "
                    "(Q/K/V, heads, scaled scores + mask, softmax, merge, dense, residual, LayerNorm) yourself")
        return
    if not (isinstance(result, tuple | list) and len(result) == 2):
        report.fail(f"{where}: return two things, `return output, probs` (got {type(result).__name__})")
        return
    output, probs = (as_tensor(value) for value in result)
    if output is not None and probs is not None and output.dim() == 4 and probs.dim() == 3:
        report.fail(f"{where}: output and probs are swapped: `return output, probs`")
        return
    if probs is None or probs.dim() != 4 or probs.shape[1] != heads:
        shape = None if probs is None else tuple(probs.shape)
        report.fail(f"{where}: probs has shape {shape}, expected {(batch, heads, seq, seq)}: one (seq, seq) map per "
                    f"head, and the number of heads is config.num_attention_heads ({heads} here)")
        return
    if report.tensor(probs, f"{where}: probs", shape=(batch, heads, seq, seq)) is None:
        return
    mask = bert_by_hand.additive_mask(attention_mask)
    expected_output, expected_probs = bert_by_hand.attention(hidden, weights, prefix, config, mask)
    padding_keys = (attention_mask == 0)[:, None, None, :].expand_as(probs)
    if not torch.allclose(probs.sum(-1), torch.ones(batch, heads, seq, dtype=probs.dtype), atol=TOLERANCE):
        report.fail(f"{where}: rows of probs do not sum to 1: softmax over the last dimension (the keys), after "
                    "adding the mask to the scores")
    elif padding_keys.any() and probs[padding_keys].abs().max().item() > 1e-6:
        report.fail(f"{where}: padding keys get weight up to {probs[padding_keys].abs().max().item():.2f}: add "
                    "(1 - attention_mask) times a huge negative number to the scores, shaped (batch, 1, 1, seq) so it "
                    "blocks keys (columns), not queries")
    elif not _close(probs, expected_probs):
        named = named_mistakes(probs, _attention_variants(hidden, weights, prefix, config, mask), _close)
        report.fail(f"{where}: " + (named[0] if named else "probs differ from softmax(Q K^T / sqrt(d_head) + mask) "
                                                           f"by up to {_max_diff(probs, expected_probs):.1e}"))
    output = report.tensor(output, f"{where}: output", shape=(batch, seq, hidden_size))
    if output is None:
        return
    if _close(output, expected_output):
        if _close(probs, expected_probs):
            report.ok(f"{where}: probs and output equal the library's "
                      f"(max abs diff {max(_max_diff(probs, expected_probs), _max_diff(output, expected_output)):.1e})")
        return
    context = expected_probs @ bert_by_hand.split_heads(bert_by_hand.linear(hidden, weights, f"{prefix}.self.value"),
                                                        heads)
    projected = bert_by_hand.linear(bert_by_hand.merge_heads(context), weights, f"{prefix}.output.dense")
    eps = config.layer_norm_eps
    if _close(output, bert_by_hand.layer_norm(projected, weights, f"{prefix}.output.LayerNorm", eps)):
        report.fail(f"{where}: the residual is missing: LayerNorm(dense(merged heads) + hidden)")
    elif _close(output, bert_by_hand.layer_norm(projected, weights, f"{prefix}.output.LayerNorm", eps) + hidden):
        report.fail(f"{where}: the residual is added after the LayerNorm: BERT adds it before, LayerNorm(x + hidden)")
    elif _close(output, projected + hidden) or _close(output, projected):
        report.fail(f"{where}: the LayerNorm ('{prefix}.output.LayerNorm') is missing at the end of the block")
    elif _close(output, bert_by_hand.layer_norm(projected + hidden, weights, f"{prefix}.output.LayerNorm", 1e-12)):
        report.fail(f"{where}: LayerNorm's eps is config.layer_norm_eps ({eps:g} here), not a fixed number")
    elif _close(probs, expected_probs):
        report.fail(f"{where}: probs are right, output differs by up to {_max_diff(output, expected_output):.1e}: "
                    "probs @ V per head, merge the heads, output.dense, + hidden, LayerNorm with config.layer_norm_eps")


@_never_raises
def check_attention_block(attention_block) -> CheckReport:
    """``attention_block(hidden, weights, prefix, config, attention_mask) -> (output, probs)`` for any head count."""
    return _check_each_case(CheckReport("The attention block, with a padding mask"), attention_block,
                            "attention_block", _attention_cases, _check_attention_case)


# --- exercise 3: the whole encoder ------------------------------------------------------------------------------

def _encoder_cases():
    """(description, model, batch) for each try of the learner's encoder."""
    encoder = course_encoder()
    batch = _encoder_batch()
    return (
        ("all-MiniLM-L6-v2 (6 layers, 12 heads) on 4 right-padded reviews", encoder, batch),
        ("a BERT of hidden size 48, 2 layers, 4 heads, token types 0-2, pad id 1", tiny_bert(4, 2),
         _tiny_inputs(4, [6, 9, 1, 9])),
        ("a BERT of hidden size 48, 3 layers, 6 heads", tiny_bert(6, 3), _tiny_inputs(5, [9, 4, 7])),
    )


def _hidden_states_of(report, result, where: str, count: int) -> list[torch.Tensor] | None:
    """The learner's hidden states as a list of tensors, or None with the reason reported."""
    if isinstance(result, torch.Tensor) and result.dim() == 3:
        report.fail(f"{where}: got one tensor: return every hidden state, the embeddings output then one per layer "
                    f"({count} in all), as output_hidden_states=True does")
        return None
    if isinstance(result, Mapping) or not isinstance(result, tuple | list | torch.Tensor):
        report.fail(f"{where}: return a tuple or list of {count} tensors, got {type(result).__name__}")
        return None
    if len(result) != count:
        hint = (" (is the embeddings output first?)" if len(result) == count - 1
                else " (loop over range(config.num_hidden_layers))")
        report.fail(f"{where}: {len(result)} hidden states, expected {count}: embeddings + one per layer{hint}")
        return None
    states = [as_tensor(state) for state in result]
    if any(state is None for state in states):
        report.fail(f"{where}: every hidden state should be a tensor")
        return None
    return states


def _encoder_mistake(states, weights, config, batch, real) -> str | None:
    """Name the typical mistake the learner's hidden states reproduce, if any."""
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]

    def tanh_gelu(x):
        return torch.nn.functional.gelu(x, approximate="tanh")

    variants = (
        ({"attention_mask": None}, "the mask is not applied: real tokens attend to padding"),
        ({"activation": tanh_gelu}, "this is the tanh GELU: BERT's 'gelu' is x * Phi(x), with erf"),
        ({"activation": torch.relu}, "ReLU is not GELU: BERT's feed-forward uses x * Phi(x)"),
        ({"token_type_ids": None}, "token types are ignored: add embeddings.token_type_embeddings[token_type_ids]"),
    )
    # The usual eps and head count, hard-coded: only the small BERTs (eps 0.1, 4 or 6 heads) tell them apart.
    usual_eps, twelve_heads = copy.copy(config), copy.copy(config)
    usual_eps.layer_norm_eps, twelve_heads.num_attention_heads = 1e-12, 12
    configs = (
        (usual_eps, f"LayerNorm's eps is config.layer_norm_eps ({config.layer_norm_eps:g} here), not a fixed number"),
        (twelve_heads, f"the number of heads is config.num_attention_heads ({config.num_attention_heads} here)"),
    )
    for layer_config, hint in configs:
        if layer_config.hidden_size % layer_config.num_attention_heads:
            continue  # 12 heads do not divide this hidden size: no one could have run it
        # The chapter's embeddings read the eps from config; a learner's layers may not.
        hidden = bert_by_hand.embeddings(weights, config, ids, types)
        variant = [hidden]
        for index in range(config.num_hidden_layers):
            hidden, _ = bert_by_hand.layer(hidden, weights, index, layer_config, bert_by_hand.additive_mask(mask))
            variant.append(hidden)
        if all(state.shape == expected.shape and _max_diff(state, expected, real) < TOLERANCE
               for state, expected in zip(states, variant, strict=True)):
            return hint
    for change, hint in variants:
        options = {"attention_mask": mask, "token_type_ids": types} | change
        variant = bert_by_hand.encoder_forward(weights, config, ids, **options).hidden_states
        if all(state.shape == expected.shape and _max_diff(state, expected, real) < TOLERANCE
               for state, expected in zip(states, variant, strict=True)):
            return hint
    return None


@_never_raises
def check_my_encoder(my_encoder) -> CheckReport:
    """``my_encoder(weights, config, input_ids, attention_mask, token_type_ids)``: all hidden states, any BERT."""
    report = CheckReport("Your own encoder, every layer")
    if not report.answered(my_encoder, "my_encoder"):
        return report
    for where, model, batch in _encoder_cases():
        config, weights = model.config, model.state_dict()
        count = config.num_hidden_layers + 1
        with torch.no_grad():
            expected = model(**batch, output_hidden_states=True).hidden_states
        arguments = (weights, config, batch["input_ids"].clone(), batch["attention_mask"].clone(),
                     batch["token_type_ids"].clone())
        result, used = _call_watching(report, my_encoder, arguments, "my_encoder", ENCODER_ANSWERS)
        if result is Ellipsis:
            if any("KeyError" in line and "encoder.layer." in line for line in report.lines[-1:]):
                report.fail(f"{where}: this model has {config.num_hidden_layers} layers: loop over "
                            "range(config.num_hidden_layers)")
            if any("still `...`" in line or "returned" in line for line in report.lines[-1:]):
                return report
            continue
        if used:
            report.fail(f"{where}: my_encoder calls bert_by_hand.{used[0]}, the book's own answer: assemble the "
                        "layers from your attention_block and the feed-forward steps")
            continue
        states = _hidden_states_of(report, result, where, count)
        if states is None:
            continue
        real = batch["attention_mask"].bool()  # (batch, seq): padding positions are not compared
        wrong_shape = [i for i, (s, e) in enumerate(zip(states, expected, strict=True)) if s.shape != e.shape]
        if wrong_shape:
            report.fail(f"{where}: hidden_states[{wrong_shape[0]}] has shape {tuple(states[wrong_shape[0]].shape)}, "
                        f"expected {tuple(expected[0].shape)}")
            continue
        diffs = [_max_diff(s, e, real) for s, e in zip(states, expected, strict=True)]
        first_wrong = next((i for i, diff in enumerate(diffs) if diff >= TOLERANCE), None)
        if first_wrong is None:
            report.ok(f"{where}: all {count} hidden states equal the library's on real tokens "
                      f"(max abs diff {max(diffs):.1e})")
            continue
        step = "the embeddings output" if first_wrong == 0 else f"the output of layer {first_wrong - 1}"
        hint = _encoder_mistake(states, weights, config, batch, real)
        if hint is None and first_wrong > 0:
            hint = ("if your attention_block passes its checker, look at the feed-forward block: intermediate.dense, "
                    "GELU, output.dense, + the attention block's output (not the layer's input), output.LayerNorm")
        report.fail(f"{where}: hidden_states[{first_wrong}] ({step}) differs by up to {diffs[first_wrong]:.1e}"
                    + (f": {hint}" if hint else ""))
    return report


# --- exercise 4: left padding -----------------------------------------------------------------------------------

def _left_pad_cases():
    """(description, model, sequences, pad_token_id) for each try of the learner's left_pad."""
    tokenizer = encoder_tokenizer()
    sequences = tokenizer(REVIEWS)["input_ids"]
    generator = torch.Generator().manual_seed(6)
    tiny = [torch.randint(2, 64, (length,), generator=generator).tolist() for length in (5, 9, 1, 9)]
    tiny[0][2] = 1  # a real token equal to the pad id, as when GPT-2 pads with its end-of-text token
    same_length = [torch.randint(2, 64, (6,), generator=generator).tolist() for _ in range(3)]
    return (
        ("4 reviews for all-MiniLM-L6-v2, pad id 0", course_encoder(), sequences, tokenizer.pad_token_id),
        ("4 sequences for a small BERT, pad id 1 (also a real token of the first one)", tiny_bert(4), tiny, 1),
        ("3 sequences of equal length (nothing to pad)", tiny_bert(4), same_length, 1),
    )


def _expected_left_pad(sequences, pad_token_id):
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.tensor([[pad_token_id] * (longest - len(ids)) + list(ids) for ids in sequences])
    attention_mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in sequences])
    position_ids = torch.tensor([[0] * (longest - len(ids)) + list(range(len(ids))) for ids in sequences])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def _check_left_pad_case(report, left_pad, case) -> None:
    where, model, sequences, pad_token_id = case
    result = report.call(left_pad, [list(ids) for ids in sequences], pad_token_id, name="left_pad")
    if result is Ellipsis:
        return
    if not isinstance(result, Mapping):
        report.fail(f"{where}: return a dict with input_ids, attention_mask and position_ids, "
                    f"got {type(result).__name__}")
        return
    expected = _expected_left_pad(sequences, pad_token_id)
    shape = tuple(expected["input_ids"].shape)
    fields = {}
    for key in ("input_ids", "attention_mask", "position_ids"):
        if key not in result:
            report.fail(f"{where}: the dict has no {key!r}")
            return
        fields[key] = report.tensor(result[key], f"{where}: {key}", shape=shape, dtype=torch.long)
    if any(value is None for value in fields.values()):
        return
    right = {"input_ids": torch.tensor([list(ids) + [pad_token_id] * (shape[1] - len(ids)) for ids in sequences]),
             "attention_mask": torch.tensor([[1] * len(ids) + [0] * (shape[1] - len(ids)) for ids in sequences])}
    real = expected["attention_mask"].bool()
    ok = True
    if not torch.equal(fields["input_ids"], expected["input_ids"]):
        ok = False
        if torch.equal(fields["input_ids"], right["input_ids"]) and shape[1] > min(len(ids) for ids in sequences):
            report.fail(f"{where}: input_ids are padded on the right: put the pad ids before each sequence")
        elif torch.equal(fields["input_ids"][real], expected["input_ids"][real]):
            report.fail(f"{where}: real tokens are right, padding is not pad_token_id ({pad_token_id} here)")
        else:
            report.fail(f"{where}: input_ids differ from the left-padded sequences")
    if not torch.equal(fields["attention_mask"], expected["attention_mask"]):
        ok = False
        if torch.equal(fields["attention_mask"], (expected["input_ids"] != pad_token_id).long()):
            report.fail(f"{where}: the mask marks a real token equal to the pad id as padding: build it from each "
                        "sequence's length, not by comparing ids with pad_token_id")
        else:
            report.fail(f"{where}: attention_mask should be 0 on the padding (left) and 1 on each real token")
    positions = fields["position_ids"]
    max_positions = model.config.max_position_embeddings
    if not ok:
        report.fail(f"{where}: position_ids are checked once input_ids and attention_mask are right")
    elif positions.min().item() < 0 or positions.max().item() >= max_positions:
        ok = False
        report.fail(f"{where}: position_ids hold {positions.min().item()}..{positions.max().item()}, not rows of the "
                    f"position table (0 to {max_positions - 1}): padding positions need a valid id too, e.g. 0")
    elif not torch.equal(positions[real], expected["position_ids"][real]):
        ok = False
        if torch.equal(positions[real], (expected["position_ids"] + 1)[real]):
            report.fail(f"{where}: off by one: each sequence's first real token is position 0")
        elif torch.equal(positions[real], torch.arange(shape[1]).expand(shape)[real]):
            report.fail(f"{where}: positions count from the left edge of the row, padding included: count from each "
                        "sequence's first real token instead (0, 1, 2, ...)")
        else:
            report.fail(f"{where}: position_ids of the real tokens should be 0, 1, 2, ... in each sequence")
    if ok:
        _check_left_pad_vectors(report, where, model, sequences, fields)


def _check_left_pad_vectors(report, where, model, sequences, fields) -> None:
    """The learner's batch through the model: each sequence must get the vectors it gets alone."""
    with torch.no_grad():
        batched = model(**fields).last_hidden_state
        worst = 0.0
        for row, ids in enumerate(sequences):
            alone = model(input_ids=torch.tensor([list(ids)])).last_hidden_state[0]
            worst = max(worst, _max_diff(batched[row, batched.shape[1] - len(ids):], alone))
    report.expect(worst < TOLERANCE, f"{where}: every sequence gets the vectors it gets alone "
                                     f"(max abs diff {worst:.1e})",
                  f"{where}: the batch changes a sequence's vectors by up to {worst:.1e}")


@_never_raises
def check_left_pad(left_pad) -> CheckReport:
    """``left_pad(sequences, pad_token_id)`` -> dict of (batch, longest) ``input_ids``, ``attention_mask``,
    ``position_ids``, padded on the left, positions counted from each sequence's first real token."""
    return _check_each_case(CheckReport("Left padding with position ids"), left_pad, "left_pad", _left_pad_cases,
                            _check_left_pad_case)
