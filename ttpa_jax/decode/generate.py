"""``python -m ttpa_jax.generate``: decode completions for a JSONL file of prompts.

Prompts are ``{"messages", "tools"}`` (rendered with the model's chat template) or ``{"text"}``; an
``"id"`` is carried to the output. Each output line is ``{"id"?, "index", "completion",
"token_ids", "finish_reason", "prompt_tokens"}`` in input order. Prompts are sorted by length
into batches of ``--decoding.batch-size`` (the last one padded to a power of two), so the batches of
a run share few compiled decode loops; prompts that are token prefixes of another (the turns of one
conversation) share its prefill (``decode.batching``).

``generate_completions`` is the same as a Python function; it takes a model directory or an
already-loaded model and tokenizer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import jax
import tyro
from tqdm.auto import tqdm

import ttpa_jax
from ttpa_jax.core.cli import require_paths, stage_main
from ttpa_jax.core.cli import run as run_cli
from ttpa_jax.core.jsonl import iter_jsonl, where, write_jsonl
from ttpa_jax.decode.batching import collect, iter_batches, pad_token_id
from ttpa_jax.decode.rules import GREEDY, Sampling
from ttpa_jax.decode.settings import DEFAULT_BUCKET, Decoding
from ttpa_jax.model.base_models import resolve_model
from ttpa_jax.model.config import load_config
from ttpa_jax.text.detokenize import Completion, finish, stop_token_sequences
from ttpa_jax.text.prompts import check_length, encode_prompt, eos_token_ids, load_tokenizer


@dataclasses.dataclass
class GenerateArgs:
    """Decode completions for JSONL prompts with a local Hugging Face checkpoint."""

    model: Path
    """Local HF model directory (config.json, safetensors, tokenizer with chat template)."""
    prompts: Path
    """JSONL prompts: {"messages", "tools"} or {"text"} per line; an optional "id" is carried."""
    out: Path
    """Output JSONL: {"id", "index", "completion", "token_ids", "finish_reason", "prompt_tokens"}."""
    decoding: Decoding = Decoding()
    """How completions are decoded (--decoding.max-new-tokens, --decoding.temperature, ...)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Parameter and compute dtype ("auto": the checkpoint's)."""
    progress: bool = True
    """Show a progress bar."""


def load_model(model_dir: str | os.PathLike, dtype: str = "auto"):
    return ttpa_jax.load_pretrained(model_dir, dtype=None if dtype == "auto" else dtype)


def complete(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, progress: bool = False,
             **settings) -> list[Completion]:
    """Completions for tokenized prompts, in input order; ``settings``: those of ``iter_complete``."""
    with tqdm(total=len(prompt_ids), desc="generate", unit="prompt", disable=not progress) as bar:
        return collect(iter_complete(model, tokenizer, prompt_ids, **settings), len(prompt_ids), bar.update)


def iter_complete(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                  batch_size: int = 8, sampling: Sampling = GREEDY, seed: int = 0, stop: Sequence[str] = (),
                  eos_ids=None, bucket: int = DEFAULT_BUCKET, skip=None):
    """Completions batch by batch (``batching.iter_batches``): (input indices, their ``Completion``s,
    or None for a batch whose prompts are all ``skip``-ped).

    Prompt ``i`` samples with key ``fold_in(key(seed), i)``, so its output does not depend on the
    batch it lands in. Stop strings end a completion right after the first one.
    """
    from ttpa_jax.decode.loop import generate  # JAX is loaded only to decode

    eos = tuple(eos_ids) if eos_ids is not None else eos_token_ids(model.config, tokenizer)
    stop_seqs = stop_token_sequences(tokenizer, stop)
    base_key = jax.random.key(seed)

    def decode_batch(batch):
        keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(jax.numpy.asarray(batch.rows))
        res = generate(model, batch.ids, batch.mask, conv=batch.conv, lengths=batch.lengths,
                       max_new_tokens=max_new_tokens, sampling=sampling, key=keys, eos_ids=eos, stop_token_seqs=stop_seqs, bucket=bucket)
        return [finish(tokenizer, seq, eos, stop) for seq in res.sequences()]

    return iter_batches(prompt_ids, batch_size, pad_token_id(model.config), decode_batch, skip)


def complete_with(model, tokenizer, prompt_ids: Sequence[Sequence[int]], decoding: Decoding, eos_ids=None,
                  progress: bool = False) -> list[Completion]:
    """``complete`` with the settings of a ``Decoding``."""
    return complete(model, tokenizer, prompt_ids, eos_ids=eos_ids, progress=progress, **decoding_settings(decoding))


def decoding_settings(decoding: Decoding) -> dict:
    """The keyword arguments of ``complete`` / ``iter_complete`` that a ``Decoding`` sets."""
    return dict(max_new_tokens=decoding.max_new_tokens, batch_size=decoding.batch_size, sampling=decoding.sampling(),
                seed=decoding.seed, stop=decoding.stop, bucket=decoding.bucket)


def encode_prompts(tokenizer, records: Sequence[dict], sources: Sequence[str], max_new_tokens: int,
                   max_positions: int) -> list[list[int]]:
    """Token ids of every prompt record, checked against the model's context; errors name the source."""
    encoded = []
    for rec, src in zip(records, sources, strict=True):
        ids = encode_prompt(tokenizer, rec, src)
        check_length(len(ids), max_new_tokens, max_positions, src)
        encoded.append(ids)
    return encoded


def generate_completions(model_dir: str | os.PathLike | None, prompts: list[dict], max_new_tokens: int = 256,
                         batch_size: int = 8, *, progress: bool = False, **kwargs) -> list[str]:
    """Completion texts (greedy by default) for ``{"messages", "tools"}`` / ``{"text"}`` prompts, in
    input order; the arguments are those of ``iter_completions``."""
    with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
        return collect(iter_completions(model_dir, prompts, max_new_tokens, batch_size, **kwargs), len(prompts),
                       bar.update)


def iter_completions(model_dir: str | os.PathLike | None, prompts: list[dict], max_new_tokens: int = 256,
                     batch_size: int = 8, *, model=None, tokenizer=None, stop: Sequence[str] = (),
                     sampling: Sampling = GREEDY, seed: int = 0, skip=None):
    """Completion texts batch by batch (``batching.iter_batches``): (input indices, their texts, or
    None for a batch whose prompts are all ``skip``-ped: what a resumable stage has already).

    Give ``model_dir``, or an already-loaded ``model`` and ``tokenizer`` (``model_dir`` may then
    be None; when given too, it is only read for generation_config.json's EOS ids).
    """
    model_dir = None if model_dir is None else resolve_model(model_dir)  # a base model name or FILE.gguf -> its directory
    if model is None:
        if model_dir is None:
            raise ValueError("give model_dir or a loaded model and tokenizer")
        model = load_model(model_dir)
    if tokenizer is None:
        if model_dir is None:
            raise ValueError("give model_dir or a loaded tokenizer")
        tokenizer = load_tokenizer(model_dir)
    sources = [f"prompts[{i}]" for i in range(len(prompts))]
    ids = encode_prompts(tokenizer, prompts, sources, max_new_tokens, model.config.max_position_embeddings)
    eos = eos_token_ids(model.config, tokenizer, model_dir)
    batches = iter_complete(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            sampling=sampling, seed=seed, stop=stop, eos_ids=eos, skip=skip)
    return ((idx, None if done is None else [c.text for c in done]) for idx, done in batches)


def run(args: GenerateArgs) -> list[dict]:
    """Read prompts, decode, write the output file; returns the records written."""
    args = dataclasses.replace(args, model=resolve_model(args.model))  # a base model name or FILE.gguf -> its directory
    tokenizer = load_tokenizer(args.model)
    cfg = load_config(args.model)
    lines = list(iter_jsonl(args.prompts))
    records = [obj for _, obj in lines]
    sources = [where(args.prompts, n) for n, _ in lines]
    ids = encode_prompts(tokenizer, records, sources, args.decoding.max_new_tokens, cfg.max_position_embeddings)
    model = load_model(args.model, args.dtype)
    done = complete_with(model, tokenizer, ids, args.decoding, eos_token_ids(model.config, tokenizer, args.model),
                         args.progress)
    out = []
    for i, (rec, prompt, c) in enumerate(zip(records, ids, done, strict=True)):
        row = {"id": rec["id"]} if "id" in rec else {}
        row.update(index=i, completion=c.text, token_ids=c.token_ids, finish_reason=c.finish_reason,
                   prompt_tokens=len(prompt))
        out.append(row)
    write_jsonl(args.out, out)
    return out


@stage_main
def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(GenerateArgs, args=argv, prog="python -m ttpa_jax.generate")
    require_paths(args.prompts)  # --model may also name a base model (resolved when loading)
    out = run(args)
    reasons = {r: sum(o["finish_reason"] == r for o in out) for r in ("eos", "stop", "length")}
    print(f"{len(out)} completions written to {args.out} "
          f"(ended by eos {reasons['eos']}, stop string {reasons['stop']}, length {reasons['length']})")
    return 0


if __name__ == "__main__":
    run_cli(main)
