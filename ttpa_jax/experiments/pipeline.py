"""The whole method on one small task, stage by stage: construct -> base model (a pretrained one
given by ``model``, or a tiny one from scratch) -> zero-shot evaluation -> SFT -> sample (TPS + ESM)
-> DPO -> evaluate. ``make demo`` and the ablation run it; every stage reads and writes
plain files under one run directory, reusing what an earlier (interrupted) run already made.

Run directory layout::

    data/train.jsonl, data/train.test.jsonl   constructed SFT data (disjoint tools), compact schemas
    data/pairs.jsonl                          preference pairs sampled from the SFT model
    init-model/                               tokenizer + chat template + random tiny preset (no ``model``)
    base/, base-model/                        optional language-model training of it on the training text
                                              (all tokens): a stand-in for a pretrained open LLM
    sft/, sft-model/                          SFT run (full, or LoRA on a pretrained base) and its merged export
    dpo/, dpo-model/                          DPO run (LoRA on sft-model) and its merged export
    eval/<name>.json                          fine-grained metrics per system
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal

from ttpa_jax.construct.build import ConstructConfig, construct, held_out_path
from ttpa_jax.construct.episodes import EpisodeSettings
from ttpa_jax.core.conversation import normalize_record
from ttpa_jax.decode.settings import Decoding, TPSConfig
from ttpa_jax.evaluate.metrics import evaluate_items, items_from_records, read_records
from ttpa_jax.export.settings import Args
from ttpa_jax.model.base_models import resolve_model
from ttpa_jax.model.settings import LoraConfig
from ttpa_jax.model.tiny import build_model_dir, render_chat
from ttpa_jax.sample.audit import audit_path
from ttpa_jax.sample.output import prompt_log_path
from ttpa_jax.sample.sampler import SampleConfig, format_summary, sample
from ttpa_jax.tools.esm import ErrorWeights
from ttpa_jax.train.config import DataConfig, MeshConfig, OptimConfig, RunArgs
from ttpa_jax.train.dpo.config import DpoArgs, DpoConfig
from ttpa_jax.train.sft.config import SftArgs

# Schema keywords a tiny model cannot use; dropping them shortens every prompt by about a third.
_VERBOSE_KEYS = ("description", "pattern", "format", "maxLength", "minLength", "minimum", "maximum",
                 "additionalProperties", "examples", "default", "title", "minItems", "maxItems", "uniqueItems")


# The TTPA recipes (what each changes in ``PipelineConfig``): the evidence experiment picks one on seed 0's
# validation split (``python -m ttpa_jax.ablate recipe``, docs/results.md) and the demo uses that one
# (``DEMO_RECIPE``). Every one samples tool-call turns only and runs DPO at the paper's lr (1e-4,
# cosine, 10% warm-up) for one pass over its pairs (``EVIDENCE_DPO``).
def _recipe(anchor: str, sft_weight: float, sft_tokens: str = "all", dpop_lambda: float = 0.0,
            balance_lengths: bool = False) -> dict[str, Any]:
    return {"tps_anchor": anchor, "sft_weight": sft_weight, "sft_tokens": sft_tokens, "dpop_lambda": dpop_lambda,
            "balance_lengths": balance_lengths}


RECIPES: dict[str, dict[str, Any]] = {
    "dpo": _recipe("greedy", 0.0),  # the paper's loss as written: DPO alone on greedy-anchored TPS pairs
    "dpo-nll": _recipe("greedy", 1.0),  # the earlier ablation's loss: DPO + NLL (weight 1) on every chosen token
    # DPO-Positive, the NLL term after the branch point only, closing/continuing forks balanced
    "dpop": _recipe("greedy", 1.0, "after_branch", 50.0, True),
    # the same loss on gold-anchored pairs (the gold call against the model's own alternative token)
    "gold-dpop": _recipe("gold", 1.0, "after_branch", 50.0, True),
}
# Tried after the evidence runs on the same validation split (``python -m ttpa_jax.ablate recipe
# --follow-ups``): recorded beside the candidates, never chosen, since the choice came before the runs.
FOLLOW_UP_RECIPES: dict[str, dict[str, Any]] = {
    # the chosen loss with answer-turn pairs too: call-turn-only pairs taught the model to keep calling
    "dpo-nll-answers": {**_recipe("greedy", 1.0), "answer_turns": True},
}
EVIDENCE_DPO: dict[str, Any] = {"answer_turns": False, "dpo_epochs": 1.0, "dpo_lr": 1e-4, "dpo_warmup": 0.1}
DEMO_RECIPE = "dpo-nll"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """One run of the pipeline on the bundled tool library with the offline template generator."""

    out: Path = Path("runs/demo")
    """Run directory; an interrupted run continues where it stopped."""
    seed: int = 0
    """Seed of data construction, initialisation, data order and sampling."""
    num: int = 400
    """Records to construct (a fifth held out, on tools never seen in training)."""
    mode: Literal["reversed", "forward"] = "reversed"
    """Data construction: reversed (query written last) or forward (query first)."""
    error_recovery: float = 0.15
    """Data construction: fraction of training records with an error-recovery episode (a call first
    made with a wrong value that the tool refuses, then corrected; what MAE masks)."""
    model: str | None = None
    """Pretrained base: a local HF directory, a FILE.gguf or a base model name (smollm2-135m-instruct);
    None trains the tiny ``preset`` from scratch."""
    preset: str = "tiny-llama3"
    """Architecture preset of the model trained from scratch (when no ``model``)."""
    min_candidates: int = 2
    """Data construction: fewest candidate tools in a record's prompt."""
    max_candidates: int = 3
    """Data construction: most candidate tools in a record's prompt."""
    max_calls: int = 3
    """Data construction: most tool calls per record."""
    base_steps: int = 0
    """Language-model steps on the training conversations (every token) before SFT; 0 skips the stage
    (within the demo's few CPU minutes, SFT steps teach the tiny model more)."""
    sft_steps: int = 110
    sft_lr: float = 3e-3
    sft_lora_rank: int = 0
    """LoRA rank of the SFT stage (0: full fine-tuning)."""
    train_batch_size: int = 0
    """Sequences per SFT / DPO step (0: ``batch_size``)."""
    logits_chunk: int = 0
    """Training: positions per chunk of the vocabulary projection (0: all at once)."""
    pad_multiple: int = 0
    """Training: sequences are padded to a multiple of this (0: to ``max_length``, one compiled shape)."""
    row_length: int = 0
    """Training: the longest row that holds several sequences (packed SFT, shared-prefix DPO; 0: ``max_length``)."""
    mae: bool = False
    """TL-Training MAE in the SFT stage."""
    pkt_wmax: float = 0.0
    """TL-Training PKT in the SFT stage (0: off; the paper uses 9)."""
    sample_mode: Literal["tps", "trajectory"] = "tps"
    """Preference sampling: token-level branches (TTPA) or whole trajectories (baseline)."""
    sample_records: int = 80
    """Training records whose tool-call turns are sampled for preference pairs."""
    epsilon: float = 0.2
    """TPS: branch where the top-1/top-2 probability gap is below this."""
    tps_anchor: Literal["greedy", "gold"] = "greedy"
    """TPS: branch off the model's greedy decode, or off the teacher-forced gold call (``--tps.anchor``)."""
    answer_turns: bool = True
    """TPS: also sample final-answer turns (``--tps.answer-turns``)."""
    dpo_steps: int = 24
    dpo_epochs: float = 0.0
    """DPO: passes over the sampled pairs; > 0 sets the steps from the pair count (ceil(epochs x pairs /
    batch)) instead of ``dpo_steps``."""
    dpo_warmup: float = 0.1
    """DPO: fraction of the steps with linear warm-up (then cosine decay)."""
    dpo_lr: float = 1e-3
    dpo_lora_rank: int = 8
    precompute_ref: bool = False
    """DPO: reference log-probabilities computed once before training."""
    beta: float = 0.1
    sft_weight: float = 1.0
    """DPO: weight of the SFT term on the chosen side (keeps the chosen calls' likelihood up)."""
    sft_tokens: Literal["all", "after_branch"] = "all"
    """DPO: the SFT term over every chosen completion token, or only those from the pair's branch point on."""
    dpop_lambda: float = 0.0
    """DPO-Positive's penalty on the chosen side falling below the reference (0: plain DPO)."""
    balance_lengths: bool = False
    """DPO: pairs whose chosen side is longer and those whose chosen side is shorter weigh the same in total."""
    eval_records: int = 40
    """Held-out records evaluated (all their assistant turns)."""
    eval_answer_records: int = 0
    """Answer turns are evaluated on the first this many of them only (0: on all; call turns always)."""
    max_new_tokens: int = 96
    batch_size: int = 8
    """Prompts decoded together (evaluation, sampling)."""
    max_length: int = 512
    progress: bool = True

    @classmethod
    def quick(cls, out: Path, seed: int = 0) -> PipelineConfig:
        """A few steps per stage: checks the pipeline end to end in about two minutes."""
        return cls(out=out, seed=seed, num=40, base_steps=2, sft_steps=3, sample_records=6, dpo_steps=2, eval_records=4,
                   max_new_tokens=24, batch_size=4, progress=False)

    @classmethod
    def pretrained(cls, out: Path, model: str, seed: int = 0, progress: bool = True) -> PipelineConfig:
        """LoRA SFT + TTPA on a small pretrained instruct model (SmolLM2-135M sized), sized to finish within
        20 minutes from a clean clone on the slower kind of 2-core machine (AVX2 only: about half the matmul
        peak of an AVX-512 one; docs/benchmarks.md): 3 candidate tools per record, at most 2 calls, short
        budgets. Rows are padded to multiples of 1024 (an SFT step's 3 records of about 630 tokens packed
        into one row of 2048 where they fit): on a CPU a new batch shape costs a 40-60 s compile, about
        three steps. 96 new tokens hold the longest calls of the bundled tools (64 cut a sixth of them).
        Evaluation on 10 held-out records (about 25 turns) at 16 prompts per batch. TPS on the call turns
        of 3 training records; DPO with the recipe the evidence experiment picked (``DEMO_RECIPE``), one
        pass over the pairs at lr 1e-4 (``EVIDENCE_DPO``), the reference computed live (a few steps:
        precomputing it would cost more than they do)."""
        return cls(out=out, seed=seed, model=model, num=300, min_candidates=3, max_candidates=3, max_calls=2,
                   **EVIDENCE_DPO, **RECIPES[DEMO_RECIPE],
                   error_recovery=0.0, sft_steps=12, sft_lr=2e-3, sft_lora_rank=16, train_batch_size=3,
                   logits_chunk=256, pad_multiple=1024, row_length=2048, sample_records=3, epsilon=0.2,
                   dpo_lora_rank=16, precompute_ref=False, eval_records=10, max_new_tokens=96, batch_size=16,
                   max_length=1024, progress=progress)


# --------------------------------------------------------------------------- stages
def compact_schema(schema: dict) -> dict:
    """A JSON Schema without descriptions and validation keywords (names, types, enums, required stay)."""
    out = {k: v for k, v in schema.items() if k not in _VERBOSE_KEYS}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {name: compact_schema(p) for name, p in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = compact_schema(out["items"])
    return out


def compact_tool(tool: dict) -> dict:
    fn = tool.get("function", tool)
    return {"type": "function", "function": {"name": fn["name"], "parameters": compact_schema(fn.get("parameters", {}))}}


def construct_data(cfg: PipelineConfig) -> tuple[Path, Path]:
    """Construct train and held-out SFT data; tool schemas are compacted for the tiny model."""
    raw = cfg.out / "data" / "constructed.jsonl"
    episode = EpisodeSettings(mode=cfg.mode, min_calls=1, max_calls=cfg.max_calls, min_candidates=cfg.min_candidates,
                              max_candidates=cfg.max_candidates, follow_up=0.1)
    summary = construct(ConstructConfig(
        out=raw, num=cfg.num, seed=cfg.seed, episode=episode, split=0.2, error_recovery=cfg.error_recovery,
        system_prompt="", progress=cfg.progress,
    ))
    say(f"construct: {summary.made + summary.already_present} records ({cfg.mode}), "
        f"{summary.rejected_instances} rejected and redrawn")
    outs = []
    for src, dst in ((raw, cfg.out / "data" / "train.jsonl"), (held_out_path(raw), cfg.out / "data" / "test.jsonl")):
        lines = []
        for line in src.read_text().splitlines():
            rec = json.loads(line)
            rec["tools"] = [compact_tool(t) for t in rec["tools"]]
            lines.append(json.dumps(rec, ensure_ascii=False))
        dst.write_text("\n".join(lines) + "\n")
        outs.append(dst)
    return outs[0], outs[1]


def build_base_model(cfg: PipelineConfig, train_file: Path) -> Path:
    """Tokenizer trained on the rendered training conversations + chat template + random preset weights."""
    out = cfg.out / "init-model"
    if (out / "model.safetensors").is_file():
        return out
    texts = []
    for i, line in enumerate(train_file.read_text().splitlines(), start=1):
        rec = normalize_record(json.loads(line), f"{train_file}:{i}")
        texts.append(render_chat(rec["messages"], rec["tools"]))
    return build_model_dir(out, texts, preset=cfg.preset, seed=cfg.seed, split_words=False)


def _data(cfg: PipelineConfig, **kw) -> DataConfig:
    return DataConfig(batch_size=cfg.train_batch_size or cfg.batch_size, max_length=cfg.max_length, overflow="truncate",
                      pad_multiple=cfg.pad_multiple or cfg.max_length, row_length=cfg.row_length, **kw)


def sft_config(cfg: PipelineConfig, model: Path, data: Path, *, base: bool = False) -> SftArgs:
    """Full fine-tuning (LoRA with ``sft_lora_rank``); ``base=True``: the language-model stage (loss on
    every token, into base/)."""
    steps = cfg.base_steps if base else cfg.sft_steps
    rank = cfg.sft_lora_rank
    return SftArgs(
        model=str(model), data=str(data), out=str(cfg.out / ("base" if base else "sft")),
        steps=steps, seed=cfg.seed, mae=cfg.mae and not base, pkt_wmax=0.0 if base else cfg.pkt_wmax,
        lora=LoraConfig(rank=rank, alpha=2.0 * rank), save_every=max(steps // 2, 1), logits_chunk=cfg.logits_chunk,
        dataset=_data(cfg, assistant_only=not base),
        optim=OptimConfig(lr=cfg.sft_lr, warmup_steps=max(steps // 10, 1), weight_decay=0.01),
        mesh=MeshConfig(data=1, fsdp=1, tensor=1),
    )


def dpo_steps(cfg: PipelineConfig, pairs: int) -> int:
    """The DPO stage's steps: ``dpo_epochs`` passes over ``pairs`` when set, else ``dpo_steps``."""
    if cfg.dpo_epochs <= 0:
        return cfg.dpo_steps
    return max(math.ceil(cfg.dpo_epochs * pairs / (cfg.train_batch_size or cfg.batch_size)), 1)


def dpo_config(cfg: PipelineConfig, model: Path, data: Path, steps: int | None = None) -> DpoArgs:
    """DPO (LoRA on ``model``) on the pairs in ``data`` for ``steps`` (default: ``dpo_steps`` of the
    pairs in ``data``)."""
    if steps is None:
        steps = dpo_steps(cfg, sum(1 for line in Path(data).read_text().splitlines() if line.strip()))
    return DpoArgs(
        model=str(model), data=str(data), out=str(cfg.out / "dpo"), steps=steps,
        seed=cfg.seed, lora=LoraConfig(rank=cfg.dpo_lora_rank, alpha=2.0 * cfg.dpo_lora_rank),
        save_every=max(steps // 2, 1), logits_chunk=cfg.logits_chunk, dataset=_data(cfg),
        optim=OptimConfig(lr=cfg.dpo_lr, warmup_steps=max(round(steps * cfg.dpo_warmup), 1)),
        dpo=DpoConfig(beta=cfg.beta, sft_weight=cfg.sft_weight, precompute_ref=cfg.precompute_ref,
                      sft_tokens=cfg.sft_tokens, dpop_lambda=cfg.dpop_lambda, balance_lengths=cfg.balance_lengths),
        mesh=MeshConfig(data=1, fsdp=1, tensor=1),
    )


def base_model(cfg: PipelineConfig, train_file: Path) -> Path:
    """The model SFT starts from: the pretrained ``model`` (a GGUF or a base model name is converted once
    into the cache), else the random tiny model, after the language-model stage if enabled."""
    if cfg.model is not None:
        return Path(resolve_model(cfg.model))
    init = build_base_model(cfg, train_file)
    if cfg.base_steps <= 0:
        return init
    return run_training(sft_config(cfg, init, train_file, base=True), cfg.progress)


def run_training(train_cfg: RunArgs, progress: bool) -> Path:
    """Train (or resume) and export merged weights next to the run: RUN-model/."""
    from ttpa_jax.export.weights import export  # deferred: keeps this module JAX-free
    from ttpa_jax.train.loop import train  # deferred: keeps this module JAX-free

    summary = train(train_cfg, progress=progress)
    m = summary["metrics"]
    if m:
        reward = f", reward {m['reward']:.4f}" if "reward" in m else ""  # the RL units' episode reward
        say(f"{train_cfg.objective}: step {summary['step']}/{summary['steps']}, loss {m['loss']:.4f}{reward}")
    out = Path(train_cfg.out + "-model")
    export(Args(run=train_cfg.out, out=str(out)))
    return out


def sample_subset(cfg: PipelineConfig, train: Path) -> Path:
    """The first ``sample_records`` training records: the prompts of every preference stage (DPO
    pairs and RL rollouts draw on the same records)."""
    subset = cfg.out / "data" / "sample-prompts.jsonl"
    subset.parent.mkdir(parents=True, exist_ok=True)
    subset.write_text("".join(line + "\n" for line in train.read_text().splitlines()[: cfg.sample_records]))
    return subset


class NoPairs(RuntimeError):
    """The sampled candidates made no preference pair (every one scored within the margin of the best)."""


def sample_pairs(cfg: PipelineConfig, model_dir: Path, prompts: Path, weights: dict[str, float] | None = None
                 ) -> tuple[Path, dict]:
    """Preference pairs (TPS or trajectory, ``cfg.sample_mode``) from ``model_dir`` on the turns of the
    ``prompts`` records, ESM-scored with ``weights`` (None: the defaults); returns the pairs file and
    the pair audit. Pairs and audit are renamed into place once complete, so a rerun reuses them."""
    out = cfg.out / "data" / "pairs.jsonl"
    if out.is_file() and audit_path(out).is_file():
        say(f"sample: reusing {out}")
        return out, json.loads(audit_path(out).read_text())
    tmp = out.with_name("pairs.tmp.jsonl")
    summary = sample(SampleConfig(
        model=model_dir, data=prompts, out=tmp, mode=cfg.sample_mode,
        decoding=Decoding(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, temperature=1.0, seed=cfg.seed),
        tps=TPSConfig(epsilon=cfg.epsilon, dynamic_m=2, max_branch_points=3, top_k=2, anchor=cfg.tps_anchor,
                      answer_turns=cfg.answer_turns),
        num_samples=4, esm=ErrorWeights(**(weights or {})), progress=cfg.progress,
    ))
    if summary["pairs"] == 0:
        raise NoPairs(f"sampling made no preference pairs from {prompts}")
    audit_path(tmp).replace(audit_path(out))
    prompt_log_path(tmp).replace(prompt_log_path(out))  # an interrupted sample resumed from pairs.tmp.*
    tmp.replace(out)
    say("sample: " + format_summary({**summary, "audit_path": audit_path(out)}).replace("\n", "\n  "))
    return out, summary["audit"]


def evaluate_model(cfg: PipelineConfig, model_dir: Path, test_file: Path, name: str) -> dict:
    """Fine-grained metrics of ``model_dir`` on the first held-out records; also written to eval/."""
    from ttpa_jax.decode.generate import generate_completions  # deferred: keeps this module JAX-free

    records = read_records(test_file)[: cfg.eval_records]
    items = items_from_records(records)
    if cfg.eval_answer_records:
        answered = {str(r.get("id", pos)) for pos, r in enumerate(records[: cfg.eval_answer_records], start=1)}
        items = [i for i in items if i.kind != "answer" or i.id in answered]
    prompts = [{"messages": item.prompt, "tools": item.tools} for item in items]
    texts = generate_completions(str(model_dir), prompts, max_new_tokens=cfg.max_new_tokens,
                                 batch_size=cfg.batch_size, progress=cfg.progress)
    result = evaluate_items(items, {(i.id, i.turn): t for i, t in zip(items, texts, strict=True)})
    path = cfg.out / "eval" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def say(msg: str) -> None:
    print(msg, flush=True)
