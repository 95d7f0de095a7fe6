"""Build a tiny Hugging Face model directory from scratch: a BPE tokenizer trained on the user's
text, a chat template with tool support, and a randomly initialised preset.

The demo and the tests use it, so nothing is ever downloaded. The chat template renders tools and
tool calls in the Qwen2.5 layout (``<tools>`` in the system turn, ``<tool_call>{json}</tool_call>``
in assistant turns, ``<tool_response>`` in user turns).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

import ttpa_jax
from ttpa_jax.model.config import load_config

SPECIAL_TOKENS = ("<|pad|>", "<|im_end|>", "<|im_start|>", "<|endoftext|>")
# Tool-call markers are single tokens (as in Qwen2.5) but decode as ordinary text.
MARKER_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


def chat_template() -> str:
    return resources.files("ttpa_jax").joinpath("data/chat_template_qwen_tools.jinja").read_text()


def render_chat(messages: list[dict], tools: list[dict] | None = None) -> str:
    """A conversation rendered with the package's chat template (no tokenizer needed)."""
    from transformers.utils.chat_template_utils import render_jinja_template  # deferred: transformers is slow to import

    rendered, _ = render_jinja_template(conversations=[messages], tools=tools or None, chat_template=chat_template())
    return rendered[0]


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, split_words: bool = True):
    """Train a byte-level BPE tokenizer with ``vocab_size`` entries and save it with the chat template.

    Ids: 0 ``<|pad|>``, 1 ``<|im_end|>`` (end of turn, the EOS), 2 ``<|im_start|>``, 3
    ``<|endoftext|>``, 4-7 the tool-call markers. ``split_words=False`` lets merges cross spaces and
    punctuation (tokens of up to 24 bytes): on repetitive text such as rendered tool schemas this
    shortens sequences 2.5x for a small vocabulary, and the call syntax becomes a few tokens a model
    trained for minutes learns quickly. Returns the transformers tokenizer.
    """
    from transformers import PreTrainedTokenizerFast  # deferred: transformers is slow to import

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_words)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *MARKER_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=None if split_words else 24,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>", unk_token=None,
        model_max_length=1 << 20, clean_up_tokenization_spaces=False,
    )
    fast.chat_template = chat_template()
    fast.save_pretrained(out_dir)
    return fast


def build_model_dir(out_dir: str | os.PathLike, texts: Iterable[str], preset: str = "tiny-llama3", seed: int = 0,
                    split_words: bool = True) -> Path:
    """A complete tiny HF model directory: tokenizer + chat template + random weights of ``preset``."""
    out = Path(out_dir)
    cfg = load_config(preset)
    tokenizer = train_tokenizer(texts, cfg.vocab_size, out, split_words=split_words)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} entries, more than the preset's vocab_size {cfg.vocab_size}")
    cfg = cfg.replace(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    ttpa_jax.save_pretrained(ttpa_jax.init_model(cfg, seed=seed), out)
    return out
