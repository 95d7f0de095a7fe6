"""One (system, seed) run of the ablation: resumable stages, one small JSON of metrics.

Every system of a seed shares the seed's constructed data and held-out test set; the systems that
build on SFT share one SFT model. Layout under ``OUT/seed<k>/``::

    reversed/   data (train + held-out test), init model (tiny quick mode), sft/, sft-model/
    forward/    the same on forward (query-first) data (TTPA-fwd)
    tl-sft/     sft/, sft-model/: SFT with MAE + PKT (w_max 9)
    <system>/   data/pairs.jsonl (+ audit), dpo/ and dpo-model/, or rl/ and rl-model/
    <system>/eval-heldout.json, eval-bfcl.json

A stage whose output is complete is skipped: construction keeps the records made, training resumes
from its latest checkpoint, an export or evaluation is marked complete by a file written last.
The per-run result goes to ``RESULTS/<system>/seed<k>.json``; a run whose file exists is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Literal

from ttpa_jax.ablation.scale import Scale
from ttpa_jax.core.errors import ConfigError
from ttpa_jax.cpu.malloc import release_free_memory
from ttpa_jax.evaluate.leaderboard import run_bfcl
from ttpa_jax.experiments import pipeline as P
from ttpa_jax.experiments.pipeline import PipelineConfig
from ttpa_jax.model.settings import LoraConfig
from ttpa_jax.train.config import MeshConfig
from ttpa_jax.train.methods import method_config
from ttpa_jax.train.rl.config import PpoArgs, RlConfig

# Alternative ESM weights for the sensitivity check (the default is tools.esm.ErrorWeights()).
WEIGHT_SETS: dict[str, dict[str, float]] = {
    "flat": {t: 0.5 for t in ("format", "tool_hallucination", "wrong_tool", "param_name", "param_type", "param_value")},
    "binary": {t: 1.0 for t in ("format", "tool_hallucination", "wrong_tool", "param_name", "param_type", "param_value")},
}
EPSILONS = (0.05, 0.1, 0.2, 0.3)


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    label: str
    kind: Literal["zero-shot", "sft", "dpo", "rl"]
    construction: Literal["reversed", "forward"] = "reversed"
    tl: bool = False
    sample_mode: Literal["tps", "trajectory"] = "tps"
    epsilon: float | None = None
    weights: str | None = None
    rl: Literal["grpo", "ppo"] | None = None
    reward: str = ""


SYSTEMS = (
    System("zero-shot", "zero-shot", "zero-shot"),
    System("sft", "SFT", "sft"),
    System("tl-sft", "TL-SFT", "sft", tl=True),
    System("dpo-traj", "SFT + DPO (trajectory)", "dpo", sample_mode="trajectory"),
    System("ttpa", "TTPA", "dpo"),
    System("ttpa-fwd", "TTPA (forward data)", "dpo", construction="forward"),
    System("grpo", "SFT + GRPO (ESM)", "rl", rl="grpo", reward="esm"),
    System("ppo", "SFT + PPO (TL reward)", "rl", rl="ppo", reward="tl"),
)
FOLLOW_UPS = tuple(System(f"ttpa-eps{e:g}", f"TTPA, epsilon {e:g}", "dpo", epsilon=e) for e in EPSILONS) + tuple(
    System(f"ttpa-w-{w}", f"TTPA, {w} ESM weights", "dpo", weights=w) for w in WEIGHT_SETS)
BY_NAME = {s.name: s for s in SYSTEMS + FOLLOW_UPS}


def say(msg: str) -> None:
    print(msg, flush=True)


def result_path(results: Path, system: str, seed: int) -> Path:
    return Path(results) / system / f"seed{seed}.json"


class SeedRun:
    """The shared stages of one seed, each computed once and reused by every system."""

    def __init__(self, scale: Scale, out: Path, seed: int):
        self.scale, self.seed, self.root = scale, seed, Path(out) / f"seed{seed}"
        self.seconds: dict[str, float] = {}
        self._cache: dict[str, Any] = {}

    def cfg(self, sub: str, **kw) -> PipelineConfig:
        return dataclasses.replace(self.scale.pipeline, out=self.root / sub, seed=self.seed, **kw)

    def train_cfg(self, train_cfg):
        """A stage's training settings with the scale's progress bars, dtype and mesh."""
        return dataclasses.replace(train_cfg, progress=self.scale.pipeline.progress, dtype=self.scale.train_dtype,
                                   mesh=MeshConfig(data=1, fsdp=self.scale.fsdp, tensor=1))

    def _timed(self, name: str, fn, *a):
        if name not in self._cache:
            t0 = time.perf_counter()
            say(f"== seed {self.seed}: {name}")
            self._cache[name] = fn(*a)
            self.seconds[name] = time.perf_counter() - t0
            release_free_memory()  # the next stage's buffers differ (cpu/malloc.py)
        return self._cache[name]

    def data(self, construction: str = "reversed") -> tuple[Path, Path]:
        return self._timed(f"construct {construction}", P.construct_data, self.cfg(construction, mode=construction))

    def base(self, construction: str = "reversed") -> Path:
        train, _ = self.data(construction)
        return self._timed(f"base model {construction}", P.base_model, self.cfg(construction, mode=construction), train)

    def test_file(self) -> Path:
        return self.data("reversed")[1]  # the tool split depends on the seed only: one held-out set for all

    def sft(self, construction: str = "reversed", tl: bool = False) -> Path:
        train, _ = self.data(construction)
        sub = "tl-sft" if tl else construction
        cfg = self.cfg(sub, mode=construction, mae=tl, pkt_wmax=9.0 if tl else 0.0)
        train_cfg = self.train_cfg(P.sft_config(cfg, self.base(construction), train))
        return self._timed(f"sft {sub}", train_and_export, train_cfg)

    def model(self, system: System) -> tuple[Path, dict[str, Any]]:
        """The system's trained model directory and what went into it (data sizes, budgets)."""
        s, sc = system, self.scale
        train, _ = self.data(s.construction)
        info: dict[str, Any] = {"data": {"construction": s.construction, "train_records": _lines(train),
                                         "test_records": _lines(self.test_file())}, "budgets": {}}
        if s.kind == "zero-shot":
            return self.base(s.construction), info
        sft_cfg = self.cfg("tl-sft" if s.tl else s.construction, mode=s.construction)
        info["budgets"]["sft"] = {"steps": sft_cfg.sft_steps, "batch": sft_cfg.train_batch_size or sft_cfg.batch_size,
                                  "lora_rank": sft_cfg.sft_lora_rank, "lr": sft_cfg.sft_lr,
                                  "mae": s.tl, "pkt_wmax": 9.0 if s.tl else 0.0}
        sft = self.sft(s.construction, s.tl)
        if s.kind == "sft":
            return sft, info
        cfg = self.cfg(s.name, mode=s.construction, sample_mode=s.sample_mode,
                       epsilon=sc.pipeline.epsilon if s.epsilon is None else s.epsilon)
        prompts = P.sample_subset(cfg, train)
        info["data"]["preference_prompt_records"] = _lines(prompts)
        if s.kind == "dpo":
            pairs, audit = self._timed(f"sample {s.name}", P.sample_pairs, cfg, sft, prompts, WEIGHT_SETS.get(s.weights or ""))
            info["data"]["pairs"] = _lines(pairs)
            info["audit"] = audit
            info["budgets"]["dpo"] = {"steps": cfg.dpo_steps, "batch": cfg.train_batch_size or cfg.batch_size,
                                      "lora_rank": cfg.dpo_lora_rank, "lr": cfg.dpo_lr, "beta": cfg.beta,
                                      "epsilon": cfg.epsilon, "sample_mode": s.sample_mode,
                                      "esm_weights": s.weights or "default"}
            dpo_cfg = self.train_cfg(P.dpo_config(cfg, sft, pairs))
            return self._timed(f"dpo {s.name}", train_and_export, dpo_cfg), info
        rl_cfg = self.train_cfg(rl_config(cfg, sc, sft, prompts, s))
        info["budgets"]["rl"] = {"algorithm": s.rl, "reward": s.reward, "steps": rl_cfg.steps,
                                 "prompts_per_step": rl_cfg.rl.prompts_per_step, "group_size": rl_cfg.rl.group_size,
                                 "episodes": rl_cfg.steps * rl_cfg.rl.prompts_per_step * rl_cfg.rl.group_size,
                                 "lora_rank": rl_cfg.lora.rank, "lr": rl_cfg.optim.lr, "kl_coef": rl_cfg.rl.kl_coef}
        return self._timed(f"{s.rl} {s.name}", train_and_export, rl_cfg), info


def _lines(path: Path) -> int:
    return sum(1 for line in Path(path).read_text().splitlines() if line.strip())


def train_and_export(train_cfg) -> Path:
    """Train (or resume) and export merged weights to RUN-model/; a finished export is reused. The
    run's ``progress`` field decides the progress bars."""
    out = Path(train_cfg.out + "-model")
    done = out / ".export-complete"
    if done.is_file():
        return out
    P.run_training(train_cfg, train_cfg.progress)
    done.write_text("done\n")
    return out


def rl_config(cfg: PipelineConfig, scale: Scale, sft: Path, prompts: Path, system: System):
    """GRPO (ESM reward) or TL-Training's PPO (its error-category reward), LoRA on the SFT model."""
    base = PpoArgs.__dataclass_fields__["rl"].default if system.rl == "ppo" else RlConfig()
    rl = dataclasses.replace(base, reward=system.reward, max_new_tokens=cfg.max_new_tokens, max_turns=2,
                             prompts_per_step=scale.rl_prompts_per_step,
                             group_size=scale.rl_group_size if system.rl == "grpo" else 1)
    if system.rl == "ppo":  # the same episodes per step as GRPO: prompts x group
        rl = dataclasses.replace(rl, prompts_per_step=scale.rl_prompts_per_step * scale.rl_group_size)
    dpo = P.dpo_config(cfg, sft, prompts)
    return method_config(
        system.rl, model=str(sft), data=str(prompts), out=str(cfg.out / "rl"), steps=scale.rl_steps,
        seed=cfg.seed, lora=LoraConfig(rank=cfg.dpo_lora_rank, alpha=2.0 * cfg.dpo_lora_rank),
        save_every=max(scale.rl_steps // 2, 1), logits_chunk=cfg.logits_chunk, dataset=dpo.dataset,
        optim=dataclasses.replace(dpo.optim, lr=scale.rl_lr), rl=rl, mesh=dpo.mesh, progress=cfg.progress)


def evaluate(seed_run: SeedRun, system: System, model_dir: Path) -> tuple[dict, dict | None]:
    """Held-out fine-grained metrics and BFCL (official checker), each reused once written."""
    sc, root = seed_run.scale, seed_run.root / system.name
    root.mkdir(parents=True, exist_ok=True)
    held_path, bfcl_path = root / "eval-heldout.json", root / "eval-bfcl.json"
    if not held_path.is_file():
        cfg = seed_run.cfg(system.name)
        t0 = time.perf_counter()
        result = P.evaluate_model(cfg, model_dir, seed_run.test_file(), system.name)
        result.pop("per_turn", None)
        _write(held_path, result)
        seed_run.seconds[f"evaluate {system.name}"] = time.perf_counter() - t0
    bfcl = None
    if sc.bfcl_limit != 0:
        if not bfcl_path.is_file():
            t0 = time.perf_counter()
            r = run_bfcl(sc.bfcl_categories, name=system.name, model=model_dir, limit=sc.bfcl_limit,
                         max_new_tokens=sc.bfcl_max_new_tokens, batch_size=sc.pipeline.batch_size,
                         progress=sc.pipeline.progress)
            esm_all = dict(r["esm"][system.name])
            esm_all.pop("per_turn", None)
            _write(bfcl_path, {"mode": r["mode"], "limit": r["limit"], "categories": r["categories"],
                               "leaderboard": r["leaderboard"], "esm": esm_all,
                               "prompts_too_long": len(r["prompts_too_long"]),
                               "missing_predictions": r["missing_predictions"]})
            seed_run.seconds[f"bfcl {system.name}"] = time.perf_counter() - t0
        bfcl = json.loads(bfcl_path.read_text())
    return json.loads(held_path.read_text()), bfcl


def _write(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def run_system(seed_run: SeedRun, system: System, results: Path) -> Path:
    """Run (or resume) one system of one seed and write its per-run JSON; returns the path."""
    path = result_path(results, system.name, seed_run.seed)
    sc = seed_run.scale
    model = sc.pipeline.model or f"{sc.pipeline.preset} (from scratch)"
    if path.is_file():
        old = json.loads(path.read_text())
        if (old.get("scale"), old.get("model")) != (sc.name, model):
            raise ConfigError(f"{path}: made with scale {old.get('scale')!r} and model {old.get('model')!r}, not "
                              f"{sc.name!r} and {model!r}: give another --results-dir (or remove the file)")
        say(f"{path}: complete, skipped")
        return path
    t0 = time.perf_counter()
    before = dict(seed_run.seconds)
    model_dir, info = seed_run.model(system)
    held, bfcl = evaluate(seed_run, system, model_dir)
    run = {
        "system": system.name, "label": system.label, "seed": seed_run.seed, "scale": sc.name, "model": model,
        "config": {"pipeline": {k: str(v) if isinstance(v, Path) else v
                                for k, v in dataclasses.asdict(sc.pipeline).items() if k not in ("out", "seed")},
                   "system": dataclasses.asdict(system), "bfcl_limit": sc.bfcl_limit,
                   "bfcl_categories": list(sc.bfcl_categories)},
        **info,
        "eval": {"heldout_records": min(sc.pipeline.eval_records, info["data"]["test_records"]),
                 "max_new_tokens": sc.pipeline.max_new_tokens},
        # this invocation's time on the stages this system used first (shared stages count once)
        "stage_seconds": {k: round(v, 1) for k, v in seed_run.seconds.items() if k not in before},
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "heldout": held, "bfcl": bfcl,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, run)
    say(f"wrote {path}")
    return path
