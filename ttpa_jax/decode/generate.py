"""``python -m ttpa_jax.generate``: decode completions for a JSONL file of prompts.

Prompts are ``{"messages", "tools"}`` (rendered with the model's chat template) or ``{"text"}``; an
``"id"`` is carried to the output. Each output line is ``{"id"?, "index", "completion",
"token_ids", "finish_reason", "prompt_tokens"}`` in input order. Prompts are sorted by length
into batches of ``--batch-size`` (the last batch padded to full size), so every batch of a run
shares one compiled decode loop per prompt-length bucket.

``generate_completions`` is the same as a Python function; it takes a model directory or an
already-loaded model and tokenizer.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ttpa_jax.text.detokenize import Completion, finish, stop_token_sequences
from ttpa_jax.core.jsonl import DataError, iter_jsonl, where, write_jsonl
from ttpa_jax.text.prompts import check_length, encode_prompt, eos_token_ids, left_pad, load_tokenizer
from ttpa_jax.decode.rules import GREEDY, Sampling


@dataclasses.dataclass
class GenerateArgs:
    """Decode completions for JSONL prompts with a local Hugging Face checkpoint."""

    model: Path
    """Local HF model directory (config.json, safetensors, tokenizer with chat template)."""
    prompts: Path
    """JSONL prompts: {"messages", "tools"} or {"text"} per line; an optional "id" is carried."""
    out: Path
    """Output JSONL: {"id", "index", "completion", "token_ids", "finish_reason", "prompt_tokens"}."""
    batch_size: int = 8
    """Prompts decoded together."""
    max_new_tokens: int = 256
    """Most tokens generated per prompt."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0: no limit)."""
    top_p: float = 1.0
    """Sample from the smallest set of tokens whose probability reaches top_p (1: no limit)."""
    seed: int = 0
    """Sampling seed; a prompt's sample depends only on the seed and its index in the file."""
    stop: tuple[str, ...] = ()
    """Stop strings: a completion ends right after the first one it contains (e.g. </tool_call>)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Parameter and compute dtype ("auto": the checkpoint's)."""
    bucket: int = 32
    """Prompt widths are padded to buckets (multiples of this, coarser for long prompts), so varied
    lengths share compiled loops."""
    progress: bool = True
    """Show a progress bar."""


def load_model(model_dir: str | os.PathLike, dtype: str = "auto"):
    import ttpa_jax

    return ttpa_jax.load_pretrained(model_dir, dtype=None if dtype == "auto" else dtype)


def complete(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, batch_size: int = 8,
             sampling: Sampling = GREEDY, seed: int = 0, stop: Sequence[str] = (), eos_ids=None,
             bucket: int = 32, progress: bool = False) -> list[Completion]:
    """Completions for tokenized prompts, in input order.

    Prompt ``i`` samples with key ``fold_in(key(seed), i)``, so its output does not depend on the
    batch it lands in. Stop strings end a completion right after the first one.
    """
    import jax
    from tqdm.auto import tqdm

    from ttpa_jax.decode.loop import generate

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    eos = tuple(eos_ids) if eos_ids is not None else eos_token_ids(model.config, tokenizer)
    stop_seqs = stop_token_sequences(tokenizer, stop)
    pad_id = model.config.pad_token_id or 0
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    base_key = jax.random.key(seed)
    out: list[Completion | None] = [None] * len(prompt_ids)
    with tqdm(total=len(order), desc="generate", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            rows = idx + [idx[-1]] * (batch_size - len(idx))  # full batches: one compiled shape
            ids, mask = left_pad([prompt_ids[i] for i in rows], pad_id)
            keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(jax.numpy.asarray(rows))
            res = generate(model, ids, mask, max_new_tokens=max_new_tokens, sampling=sampling, key=keys,
                           eos_ids=eos, stop_token_seqs=stop_seqs, bucket=bucket)
            for r, i in enumerate(idx):
                out[i] = finish(tokenizer, res.tokens[r, : res.lengths[r]].tolist(), eos, stop)
            bar.update(len(idx))
    return out  # type: ignore[return-value]


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
                         batch_size: int = 8, *, model=None, tokenizer=None, stop: Sequence[str] = (),
                         sampling: Sampling = GREEDY, seed: int = 0, progress: bool = False) -> list[str]:
    """Completion texts (greedy by default) for ``{"messages", "tools"}`` / ``{"text"}`` prompts.

    Give ``model_dir``, or an already-loaded ``model`` and ``tokenizer`` (``model_dir`` may then
    be None; when given too, it is only read for generation_config.json's EOS ids).
    """
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
    done = complete(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, sampling=sampling,
                    seed=seed, stop=stop, eos_ids=eos, progress=progress)
    return [c.text for c in done]


def run(args: GenerateArgs) -> list[dict]:
    """Read prompts, decode, write the output file; returns the records written."""
    tokenizer = load_tokenizer(args.model)
    from ttpa_jax.model.config import load_config

    cfg = load_config(args.model)
    lines = list(iter_jsonl(args.prompts))
    records = [obj for _, obj in lines]
    sources = [where(args.prompts, n) for n, _ in lines]
    ids = encode_prompts(tokenizer, records, sources, args.max_new_tokens, cfg.max_position_embeddings)
    model = load_model(args.model, args.dtype)
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    done = complete(model, tokenizer, ids, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                    sampling=sampling, seed=args.seed, stop=args.stop,
                    eos_ids=eos_token_ids(model.config, tokenizer, args.model), bucket=args.bucket,
                    progress=args.progress)
    out = []
    for i, (rec, prompt, c) in enumerate(zip(records, ids, done, strict=True)):
        row = {"id": rec["id"]} if "id" in rec else {}
        row.update(index=i, completion=c.text, token_ids=c.token_ids, finish_reason=c.finish_reason,
                   prompt_tokens=len(prompt))
        out.append(row)
    write_jsonl(args.out, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    from ttpa_jax.model.config import ConfigError
    from ttpa_jax.model.hf_io import CheckpointError

    args = tyro.cli(GenerateArgs, args=argv)
    try:
        out = run(args)
    except (DataError, ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    reasons = {r: sum(o["finish_reason"] == r for o in out) for r in ("eos", "stop", "length")}
    print(f"{len(out)} completions written to {args.out} "
          f"(ended by eos {reasons['eos']}, stop string {reasons['stop']}, length {reasons['length']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
