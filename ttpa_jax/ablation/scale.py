"""The ablation's sizes (``--quick``, the default, ``--scale paper``) and its time estimate.

The default (three seeds, the eight systems, both test sets, SmolLM2-135M-Instruct) was sized for
about three hours on a 2-core CPU machine; measured, it takes about 4.4 hours
(docs/results.md). ``estimate`` derives the time from unit costs (``UNIT_COSTS``) and the sizes below;
the costs are those the committed default-scale runs measured (``fitted_unit_costs`` over their
``stage_seconds``; a test keeps the two in step). ``python -m ttpa_jax.ablate estimate`` prints it and
the results document carries it next to the measured wall time of the runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ttpa_jax.experiments.pipeline import EVIDENCE_DPO, RECIPES, PipelineConfig

DEFAULT_MODEL = "smollm2-135m-instruct"
BFCL_CATEGORIES = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
                   "irrelevance")

# Seconds on 2 CPU cores with SmolLM2-135M-Instruct: the medians that ``fitted_unit_costs`` finds in the
# committed default-scale runs (docs/results/<system>/seed<k>.json, seeds 0-2), except stage_overhead.
UNIT_COSTS = {
    "sft_record": 6.5,        # LoRA SFT per record (~730 tokens, 3 records in rows of 1024, logits chunk 256)
    "decode_prompt": 2.25,    # held-out evaluation: greedy, batch 8, 96 new tokens, ~700-token prompts
    "bfcl_prompt": 1.67,      # BFCL, per prompt and 128 new tokens
    "tps_prompt": 5.7,        # pair sampling: greedy + up to 3 branch points continued
    "dpo_pair": 8.7,          # one pair per DPO step and batch row, the reference computed live
    "rl_episode": 18.5,       # one sampled episode of GRPO or PPO, its share of the update included
    "stage_overhead": 45.0,   # loading the model and compiling a stage's jitted steps (make demo)
}
TURNS_PER_RECORD = 2.45       # assistant turns per held-out record (constructed data, 3 tools, 1-2 calls)


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    pipeline: PipelineConfig
    rl_steps: int
    rl_prompts_per_step: int
    rl_group_size: int
    rl_lr: float
    bfcl_limit: int | None
    """BFCL entries per category (None: all; 0: BFCL not evaluated)."""
    bfcl_categories: tuple[str, ...] = BFCL_CATEGORIES
    bfcl_max_new_tokens: int = 96
    train_dtype: str = "float32"
    """Compute dtype of every training stage (the frozen base is stored in it)."""
    fsdp: int = 1
    """Devices the training stages shard parameters over (-1: all; the CPU scales use one)."""
    validation_records: int = 0
    """Training records set aside (the last ones) to pick settings on; never trained on."""


def evidence_size(name: str) -> int:
    """How many times the evidence experiment's sizes a scale name asks for: ``evidence`` 1,
    ``evidence-x<k>`` k."""
    if name == "evidence":
        return 1
    k = name[len("evidence-x"):] if name.startswith("evidence-x") else ""
    if not k.isdigit() or int(k) < 1:
        raise ValueError(f"scale {name!r}: expected evidence or evidence-x<k> with k a positive whole number")
    return int(k)


def make_scale(name: str, model: str | None, out: Path, progress: bool = False, bfcl_limit: int | None = -1) -> Scale:
    """``quick`` (tiny model from scratch, unless ``model``), ``default`` (SmolLM2-135M unless
    ``model``) or ``paper`` (``model`` required: a 7B base on a GPU/TPU). ``bfcl_limit`` -1 keeps the
    scale's own."""
    if name == "quick":
        p = PipelineConfig.quick(out, 0)
        if model is not None:
            p = dataclasses.replace(p, model=model, sft_lora_rank=8)
        scale = Scale("quick", p, rl_steps=1, rl_prompts_per_step=2, rl_group_size=2, rl_lr=1e-3, bfcl_limit=1,
                      bfcl_max_new_tokens=24)
    elif name == "default":
        # the demo's model and recipe with the ablation's own budgets (20 SFT steps of 3 records, 6 DPO
        # steps, 8 prompts per decoding batch), on 20 held-out records: the committed runs' settings
        p = dataclasses.replace(PipelineConfig.pretrained(out, model or DEFAULT_MODEL, 0, progress=progress),
                                sft_steps=20, batch_size=8, sample_records=6, eval_records=20,
                                error_recovery=0.15, dpo_steps=6, dpo_lr=5e-4, dpo_epochs=0.0, answer_turns=True,
                                **RECIPES["dpo-nll"])  # the failed calls MAE masks (TL-SFT); all systems see them
        # RL: 1 prompt x 4 completions per step, 6 steps: 24 episodes (DPO: 6 steps x 3 pairs, 36 sequences)
        scale = Scale("default", p, rl_steps=6, rl_prompts_per_step=1, rl_group_size=4, rl_lr=5e-4, bfcl_limit=4)
    elif name in ("evidence", "evidence-quick") or name.startswith("evidence-x"):
        # the evidence experiment (systems.evidence_systems): 600 records (120 held out on unseen tools: the
        # first 110 hold about 160 call turns), SFT as the ablation's, TPS on every call turn of 20 training
        # records (40 made 139 pairs on seed 0: a DPO pass of about 40 minutes on 2 cores), DPO at the paper's lr for one pass over the pairs, 30 validation records (about 45 call
        # turns) to pick the recipe on; answer turns of the first 40 held-out records (about 40); BFCL non-live,
        # 25 entries per category
        # evidence-x<k> (a GPU/TPU machine): every size k times, BFCL on every non-live entry
        if name != "evidence-quick":
            k = evidence_size(name)
            p = dataclasses.replace(PipelineConfig.pretrained(out, model or DEFAULT_MODEL, 0, progress=progress),
                                    num=600 * k, sft_steps=20 * k, sample_records=20 * k, eval_records=110 * k,
                                    eval_answer_records=40 * k)
            bfcl, bfcl_tokens, validation = 25 if k == 1 else None, 96, 30 * k
        else:  # the same stages on the tiny model from scratch: checks the experiment's code in minutes
            p = PipelineConfig.quick(out, 0)
            bfcl, bfcl_tokens, validation = 1, 24, 4
        p = dataclasses.replace(p, **{**EVIDENCE_DPO, "dpo_lr": EVIDENCE_DPO["dpo_lr"] if model or name != "evidence-quick"
                                      else p.dpo_lr})  # the tiny model from scratch keeps its own lr
        scale = Scale(name, p, rl_steps=0, rl_prompts_per_step=1, rl_group_size=1, rl_lr=0.0, bfcl_limit=bfcl,
                      bfcl_max_new_tokens=bfcl_tokens, validation_records=validation)
    elif name == "paper":
        if model is None:
            raise ValueError("--scale paper: give --model (a local 7B-class HF directory or FILE.gguf)")
        p = PipelineConfig(out=out, model=model, num=5000, min_candidates=3, max_candidates=5, max_calls=3,
                           error_recovery=0.15, sft_steps=1000, sft_lr=2e-4, sft_lora_rank=64, train_batch_size=16,
                           logits_chunk=512, pad_multiple=512, sample_records=1000, epsilon=0.2, dpo_steps=300,
                           dpo_lr=5e-5, dpo_lora_rank=64, precompute_ref=True, eval_records=500,
                           max_new_tokens=256, batch_size=32, max_length=4096, progress=progress)
        scale = Scale("paper", p, rl_steps=200, rl_prompts_per_step=8, rl_group_size=8, rl_lr=1e-5, bfcl_limit=None,
                      bfcl_max_new_tokens=256, train_dtype="bfloat16", fsdp=-1)
    else:
        raise ValueError(f"--scale {name!r}: expected quick, default, paper, evidence, evidence-x<k> or evidence-quick")
    scale = dataclasses.replace(scale, pipeline=dataclasses.replace(scale.pipeline, progress=progress))
    return scale if bfcl_limit == -1 else dataclasses.replace(scale, bfcl_limit=bfcl_limit)


def stage_units(scale: Scale) -> dict[str, float]:
    """Units of each cost one stage processes at ``scale``: records an SFT run trains on, held-out prompts
    decoded, BFCL prompts (in 128-new-token equivalents), TPS prompts sampled, DPO pairs, RL episodes."""
    p = scale.pipeline
    batch = p.train_batch_size or p.batch_size
    bfcl_prompts = (scale.bfcl_limit or 400) * len(scale.bfcl_categories) if scale.bfcl_limit != 0 else 0
    return {
        "sft_record": p.sft_steps * batch,
        "decode_prompt": p.eval_records * TURNS_PER_RECORD,
        "bfcl_prompt": bfcl_prompts * scale.bfcl_max_new_tokens / 128,
        "tps_prompt": p.sample_records * TURNS_PER_RECORD,
        "dpo_pair": p.dpo_steps * batch,
        "rl_episode": scale.rl_steps * scale.rl_prompts_per_step * scale.rl_group_size,
    }


# The first word of a run's stage names (``stage_seconds`` in docs/results/<system>/seed<k>.json) -> its unit.
STAGE_UNIT = {"sft": "sft_record", "evaluate": "decode_prompt", "bfcl": "bfcl_prompt", "sample": "tps_prompt",
              "dpo": "dpo_pair", "grpo": "rl_episode", "ppo": "rl_episode"}


def fitted_unit_costs(runs, scale: Scale, overhead: float = UNIT_COSTS["stage_overhead"]) -> dict[str, float]:
    """Unit costs measured by finished runs (``{system: {seed: run}}`` as ``ablation.stats.read_runs`` gives):
    per unit, the median over the stages that did the work of (seconds - ``overhead``) / units. Stages
    that reused earlier work (under a second) are left out."""
    units = stage_units(scale)
    per_unit: dict[str, list[float]] = {}
    for per_seed in runs.values():
        for run in per_seed.values():
            for stage, sec in (run.get("stage_seconds") or {}).items():
                unit = STAGE_UNIT.get(stage.split()[0])
                if unit and sec >= 1.0 and units[unit]:
                    per_unit.setdefault(unit, []).append(max(sec - overhead, 0.0) / units[unit])
    return {u: float(np.median(v)) for u, v in per_unit.items()}


def estimate(scale: Scale, systems, seeds: int, costs: dict[str, float] = UNIT_COSTS) -> dict[str, float]:
    """Estimated seconds per kind of stage for ``systems`` over ``seeds`` (shared stages once per seed)."""
    n, c = stage_units(scale), costs
    sft_runs = len({(s.construction, s.tl) for s in systems if s.kind != "zero-shot"})
    dpo = len([s for s in systems if s.kind == "dpo"])
    rl = len([s for s in systems if s.kind == "rl"])
    stage = lambda unit, count: count * (n[unit] * c[unit] + c["stage_overhead"]) if n[unit] else 0.0  # noqa: E731
    per_seed = {
        "sft": stage("sft_record", sft_runs),
        "evaluate held-out": stage("decode_prompt", len(systems)),
        "evaluate BFCL": stage("bfcl_prompt", len(systems)),
        "sample pairs": stage("tps_prompt", dpo),
        "dpo": stage("dpo_pair", dpo),
        "rl": stage("rl_episode", rl),
    }
    return {k: v * seeds for k, v in per_seed.items()}


def format_estimate(est: dict[str, float]) -> str:
    total = sum(est.values())
    return (f"about {total / 3600:.1f} hours (" + ", ".join(f"{k} {v / 60:.0f} min" for k, v in est.items() if v)
            + ")")
