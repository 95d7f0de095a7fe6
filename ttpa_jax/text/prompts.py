"""Prompts as token ids: chat rendering with the model's own template, length checks, left padding.

A prompt record is ``{"messages", "tools"}`` (rendered with the tokenizer's chat template and
``add_generation_prompt=True``; the template's own special tokens are kept, none are added) or
``{"text"}`` (tokenized as is, with the tokenizer's usual special tokens, e.g. Llama's BOS).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttpa_jax.core.conversation import normalize_record
from ttpa_jax.core.jsonl import DataError


def load_tokenizer(model_dir: str | os.PathLike):
    from transformers import AutoTokenizer  # deferred: transformers is slow to import

    return AutoTokenizer.from_pretrained(str(model_dir))


def render_chat(tokenizer, messages: list[dict], tools: list[dict] | None) -> str:
    """The prompt text of a conversation, ending with the assistant generation prompt."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("the tokenizer has no chat template; give {\"text\"} prompts instead of {\"messages\"}")
    return tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True, tokenize=False)


def encode_chat(tokenizer, messages: list[dict], tools: list[dict] | None) -> list[int]:
    return tokenizer(render_chat(tokenizer, messages, tools), add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, record: Any, where: str) -> list[int]:
    """Token ids of one prompt record; ``where`` (``file:line``) names it in errors."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        rec = normalize_record({"messages": record["messages"], "tools": record.get("tools")}, where)
        return encode_chat(tokenizer, rec["messages"], rec["tools"])
    if isinstance(record.get("text"), str):
        return tokenizer(record["text"])["input_ids"]
    raise DataError(f"{where}: a prompt needs \"messages\" (with optional \"tools\") or a \"text\" string")


def check_length(n_prompt: int, max_new_tokens: int, max_positions: int, where: str) -> None:
    """Raise when a prompt plus the decoding budget exceeds the model's context."""
    if n_prompt == 0:
        raise DataError(f"{where}: the prompt is empty")
    if n_prompt + max_new_tokens > max_positions:
        raise DataError(
            f"{where}: prompt is {n_prompt} tokens; with max_new_tokens {max_new_tokens} that exceeds the model's "
            f"max_position_embeddings {max_positions} (shorten the prompt or lower max_new_tokens)"
        )


def eos_token_ids(model_cfg, tokenizer=None, model_dir: str | os.PathLike | None = None) -> tuple[int, ...]:
    """End-of-sequence ids: the config's, generation_config.json's and the tokenizer's EOS."""
    ids = set(model_cfg.eos_token_ids)
    if model_dir is not None and (gen := Path(model_dir) / "generation_config.json").is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """ids, mask [B, T] int32 / bool, rows right-aligned (left padded) to the longest."""
    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), pad_id, np.int32)
    mask = np.zeros((len(seqs), T), bool)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, T - len(s):] = s
            mask[i, T - len(s):] = True
    return ids, mask
