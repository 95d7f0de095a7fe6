"""Render conversations with the model's own chat template into token ids and loss weights.

``weights[t]`` is the loss weight of token ``t`` as a prediction target (predicted from tokens
``< t``). Only assistant tokens get weight: each assistant message's text span is found by rendering
the conversation up to that message with ``add_generation_prompt=True`` (the prefix) and up to and
including it; tokens whose first character falls inside a span are assistant tokens. This works with
any chat template whose renderings of growing prefixes are prefixes of each other, which holds for
the Qwen2.5 and Llama 3.x templates.

TL-Training's weighting (MAE, PKT) is applied on top by ``train.token_weights``; MAE masks single calls
of a parallel turn by their character spans, ``Rendered.call_spans``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from ttpa_jax.core.jsonl import DataError


@dataclasses.dataclass
class Rendered:
    """A rendered conversation: text, token ids, char offsets and assistant spans."""

    text: str
    ids: np.ndarray  # [T] int32
    offsets: np.ndarray  # [T, 2] char span of each token
    spans: list[tuple[int, int, int]]  # (char_start, char_end, message_index) per assistant message
    # message_index -> (char_start, char_end) of each tool call, for messages with two or more calls
    call_spans: dict[int, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)

    def token_range(self, start: int, end: int) -> np.ndarray:
        """Boolean [T]: tokens whose first character lies in [start, end)."""
        first = self.offsets[:, 0]
        return (first >= start) & (first < end)

    def assistant_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.ids), bool)
        for start, end, _ in self.spans:
            mask |= self.token_range(start, end)
        return mask


def _template(tokenizer, messages, tools, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def render_conversation(tokenizer, messages: list[dict], tools: list[dict], where: str = "") -> Rendered:
    """Render and tokenize a whole conversation, locating each assistant message's span."""
    text = _template(tokenizer, messages, tools)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = _template(tokenizer, messages[:i], tools, add_generation_prompt=True)
        upto = _template(tokenizer, messages[: i + 1], tools)
        if not (upto.startswith(prefix) and text.startswith(upto)):
            raise DataError(
                f"{where}: the chat template does not render messages[{i}] as a continuation of the "
                "conversation before it, so assistant tokens cannot be located"
            )
        spans.append((len(prefix), len(upto.rstrip()), i))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    call_spans = {i: _call_spans(tokenizer, messages, tools, i, start, end, offsets)
                  for start, end, i in spans if len(messages[i].get("tool_calls") or []) > 1}
    return Rendered(text=text, ids=np.asarray(enc["input_ids"], np.int32), offsets=offsets, spans=spans,
                    call_spans=call_spans)


def _call_spans(tokenizer, messages, tools, i, start, end, offsets) -> list[tuple[int, int]]:
    """Char spans of the tool calls of ``messages[i]`` (rendered at [start, end)).

    Rendering the message with its first k calls and with its first k + 1 calls, the two texts part
    where call k begins (the first with no call at all: after the content); rendering one call more
    than it has (the last repeated) finds where the last one ends. A cut inside a token moves to
    that token's start, so each token belongs to one call.
    """
    msg = messages[i]
    calls = msg["tool_calls"]
    texts = [_template(tokenizer, [*messages[:i], {**msg, "tool_calls": calls[:k]}], tools) for k in range(len(calls) + 1)]
    texts.append(_template(tokenizer, [*messages[:i], {**msg, "tool_calls": [*calls, calls[-1]]}], tools))
    cuts = []
    for a, b in zip(texts, texts[1:]):
        cut = min(max(len(os.path.commonprefix([a, b])), start), end)
        inside = np.flatnonzero((offsets[:, 0] < cut) & (offsets[:, 1] > cut))
        cuts.append(int(offsets[inside[0], 0]) if inside.size else cut)
    return list(zip(cuts[:-1], cuts[1:]))


def render_prompt_completion(tokenizer, prompt: list[dict], completion: dict, tools: list[dict], where: str = ""):
    """Prompt ids (with the generation prompt) and completion ids, tokenized separately.

    Separate tokenization keeps the prompt's ids identical for a chosen and a rejected completion.
    """
    prompt_text = _template(tokenizer, prompt, tools, add_generation_prompt=True)
    full_text = _template(tokenizer, [*prompt, completion], tools)
    if not full_text.startswith(prompt_text):
        raise DataError(f"{where}: the chat template does not render the completion as a continuation of the prompt")
    completion_text = full_text[len(prompt_text):].rstrip()
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    return np.asarray(prompt_ids, np.int32), np.asarray(completion_ids, np.int32)


@dataclasses.dataclass
class Example:
    """A tokenized training example: named 1-D arrays (ids int32, weights float32).

    ``dropped`` is empty for a usable example, else the reason it is skipped: ``too_long`` or
    ``no_target`` (no loss-bearing token).
    """

    features: dict[str, np.ndarray]
    truncated: bool = False
    dropped: str = ""


TOO_LONG = Example({}, dropped="too_long")
NO_TARGET = Example({}, dropped="no_target")


def fit_length(ids: np.ndarray, weights: np.ndarray, max_length: int, overflow: str):
    """Apply the overflow rule. Returns (ids, weights, truncated) or None when the record is dropped."""
    if len(ids) <= max_length:
        return ids, weights, False
    if overflow == "drop":
        return None
    if overflow == "truncate":
        return ids[:max_length], weights[:max_length], True
    raise ValueError(f"overflow must be 'drop' or 'truncate', got {overflow!r}")


def sft_example(tokenizer, record: dict[str, Any], max_length: int, overflow: str, where: str = "",
                weight_fn=None) -> Example:
    """SFT record -> ``input_ids``, ``weights``. ``weight_fn(rendered, record) -> [T]`` overrides the
    plain assistant mask (TL-Training weighting)."""
    r = render_conversation(tokenizer, record["messages"], record["tools"], where)
    weights = weight_fn(r, record) if weight_fn else r.assistant_mask().astype(np.float32)
    fitted = fit_length(r.ids, weights.astype(np.float32), max_length, overflow)
    if fitted is None:
        return TOO_LONG
    ids, weights, truncated = fitted
    if not weights.any():
        return NO_TARGET
    return Example({"input_ids": ids, "weights": weights}, truncated)


def stored_ids(record: dict[str, Any], key: str, where: str = "") -> np.ndarray | None:
    """``record[key]`` as int32 ids, None when absent; a value that is not a list of non-negative
    integers is an error naming the field."""
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
        raise DataError(f"{where}: {key}: expected a list of non-negative token ids")
    return np.asarray(value, np.int32)


def preference_sides(tokenizer, record: dict[str, Any], where: str = "") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(prompt ids, {"chosen": completion ids, "rejected": completion ids})``.

    A record that carries ``chosen_ids`` / ``rejected_ids`` (what ``sample`` writes: each side's
    completion exactly as decoded) is trained on those ids after its ``prompt_ids``, or after the
    prompt rendered with the chat template when it has none; stored ``prompt_ids`` must equal that
    rendering (else the pairs were sampled with another tokenizer or template). A side without ids
    is rendered from its message. The prompt is tokenized once, so both sides share its ids.
    """
    prompt_text = _template(tokenizer, record["prompt"], record["tools"], add_generation_prompt=True)
    prompt_ids = np.asarray(tokenizer(prompt_text, add_special_tokens=False)["input_ids"], np.int32)
    stored = stored_ids(record, "prompt_ids", where)
    if stored is not None and not np.array_equal(stored, prompt_ids):
        raise DataError(f"{where}: prompt_ids differ from the prompt rendered with this tokenizer's chat template "
                        "(the pairs were sampled with another tokenizer or template: sample again, or drop the *_ids fields)")
    sides = {}
    for side in ("chosen", "rejected"):
        ids = stored_ids(record, f"{side}_ids", where)
        if ids is None:
            p_ids, ids = render_prompt_completion(tokenizer, record["prompt"], record[side][0], record["tools"], where)
            if not np.array_equal(p_ids, prompt_ids):
                raise DataError(f"{where}: the chat template renders the prompt differently before the {side} side")
        sides[side] = ids
    return prompt_ids, sides


def preference_example(tokenizer, record: dict[str, Any], max_length: int, overflow: str, where: str = "") -> Example:
    """Preference record -> ``chosen_ids``, ``chosen_weights``, ``rejected_ids``, ``rejected_weights``.

    Each ``*_ids`` is the prompt ids followed by that side's completion ids (``preference_sides``:
    the sampled ids when the record has them); weights mark the completion tokens, so the prompt is
    the zero-weight prefix, shared by both sides. Truncation shortens completions (the prompt is
    kept whole); a prompt that alone leaves no room for a completion is dropped.
    """
    p_ids, completions = preference_sides(tokenizer, record, where)
    if len(p_ids) >= max_length:
        return TOO_LONG
    out, truncated = {}, False
    for side, c_ids in completions.items():
        if len(c_ids) == 0:
            return NO_TARGET
        ids = np.concatenate([p_ids, c_ids])
        weights = np.concatenate([np.zeros(len(p_ids), np.float32), np.ones(len(c_ids), np.float32)])
        fitted = fit_length(ids, weights, max_length, overflow)
        if fitted is None:
            return TOO_LONG
        ids, weights, cut = fitted
        truncated |= cut
        out[f"{side}_ids"], out[f"{side}_weights"] = ids, weights
    return Example(out, truncated)
