"""One (system, seed) run of the ablation: resumable stages, one small JSON of metrics.

Every system of a seed shares the seed's constructed data and held-out test set; the systems that
build on SFT share one SFT model. Layout under ``OUT/seed<k>/``::

    reversed/   data (train + held-out test; with validation records, train-fit + validation), init
                model (tiny quick mode), sft/, sft-model/
    forward/    the same on forward (query-first) data (TTPA-fwd)
    tl-sft/     sft/, sft-model/: SFT with MAE + PKT (w_max 9)
    pairs-<sampling settings>/data/   the preference pairs (+ audit) of every system sampling that way
    <system>/   dpo/ and dpo-model/, or rl/ and rl-model/, or (SFT+) sft/ and sft-model/; a system that
                ``runs_as`` another trains in that one's directory
    <system>/eval-heldout.json (+ .turns.json, the per-turn rows), eval-bfcl.json

and ``OUT/zero-shot-eval-bfcl.json`` (the base model on BFCL: the same for every seed).

A stage whose output is complete is skipped: construction keeps the records made, training resumes
from its latest checkpoint, an export or evaluation is marked complete by a file written last.
The per-run result goes to ``RESULTS/<system>/seed<k>.json`` with its per-turn rows beside it
(``seed<k>.turns.json``: predictions and verdicts, for the bootstrap and any re-scoring); a run
whose file exists is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from ttpa_jax.ablation.scale import Scale
from ttpa_jax.ablation.systems import WEIGHT_SETS, System
from ttpa_jax.core.errors import ConfigError
from ttpa_jax.cpu.malloc import release_free_memory
from ttpa_jax.evaluate.leaderboard import run_bfcl
from ttpa_jax.experiments import pipeline as P
from ttpa_jax.experiments.pipeline import PipelineConfig
from ttpa_jax.model.settings import LoraConfig
from ttpa_jax.train.config import MeshConfig
from ttpa_jax.train.methods import method_config
from ttpa_jax.train.rl.config import PpoArgs, RlConfig


def say(msg: str) -> None:
    print(msg, flush=True)


def result_path(results: Path, system: str, seed: int) -> Path:
    return Path(results) / system / f"seed{seed}.json"


class SeedRun:
    """The shared stages of one seed, each computed once and reused by every system. ``budget``: the
    system whose DPO step count every preference system and SFT+ of this seed train for (the
    evidence experiment's TTPA); None: each DPO system its own ``dpo_steps``."""

    def __init__(self, scale: Scale, out: Path, seed: int, budget: System | None = None):
        self.scale, self.seed, self.root, self.budget = scale, seed, Path(out) / f"seed{seed}", budget
        self.seconds: dict[str, float] = {}
        self._cache: dict[str, Any] = {}

    def cfg(self, sub: str, **kw) -> PipelineConfig:
        return dataclasses.replace(self.scale.pipeline, out=self.root / sub, seed=self.seed, **kw)

    def system_cfg(self, s: System) -> PipelineConfig:
        """The pipeline settings of a preference system: its sampling mode, epsilon and recipe."""
        return self.cfg(s.runs_as or s.name, mode=s.construction, sample_mode=s.sample_mode,
                        epsilon=self.scale.pipeline.epsilon if s.epsilon is None else s.epsilon, **dict(s.recipe))

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
        """(training records, held-out test records); with the scale's ``validation_records``, the
        last that many training records are set aside (``validation_file``) and never trained on."""
        cfg = self.cfg(construction, mode=construction)
        train, test = self._timed(f"construct {construction}", P.construct_data, cfg)
        if not self.scale.validation_records:
            return train, test
        return split_validation(train, self.scale.validation_records), test

    def validation_file(self) -> Path:
        train, _ = self.data("reversed")
        return train.with_name("validation.jsonl")

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

    def prompts(self, s: System) -> Path:
        train, _ = self.data(s.construction)
        return P.sample_subset(self.system_cfg(s), train)

    def sampling_dir(self, s: System) -> str:
        """Where a preference system's pairs are sampled: one directory per sampling setting, so that
        systems that differ only in their DPO loss (the recipes) share one set of pairs."""
        c = self.system_cfg(s)
        parts = ["pairs", s.construction, "tl-sft" if s.tl else "sft", c.sample_mode]
        if c.sample_mode == "tps":
            parts += [c.tps_anchor, f"eps{c.epsilon:g}"] + (["answers"] if c.answer_turns else [])
        return "-".join(parts + ([f"w-{s.weights}"] if s.weights else []))

    def pairs(self, s: System) -> tuple[Path, dict]:
        sft = self.sft(s.construction, s.tl)
        train, _ = self.data(s.construction)
        cfg = dataclasses.replace(self.system_cfg(s), out=self.root / self.sampling_dir(s))
        return self._timed(f"sample {self.sampling_dir(s)}", P.sample_pairs, cfg, sft, P.sample_subset(cfg, train),
                           WEIGHT_SETS.get(s.weights or ""))

    def preference_steps(self, s: System) -> int:
        """DPO steps of ``s``: the budget system's (its pairs sampled first) or its own."""
        owner = self.budget or s
        pairs, _ = self.pairs(owner)
        return P.dpo_steps(self.system_cfg(owner), _lines(pairs))

    def model(self, system: System) -> tuple[Path, dict[str, Any]]:
        """The system's trained model directory and what went into it (data sizes, budgets)."""
        s, sc = system, self.scale
        train, _ = self.data(s.construction)
        info: dict[str, Any] = {"data": {"construction": s.construction, "train_records": _lines(train),
                                         "test_records": _lines(self.test_file())}, "budgets": {}}
        if sc.validation_records:
            info["data"]["validation_records"] = _lines(self.validation_file())
        if s.kind == "zero-shot":
            return self.base(s.construction), info
        sft_cfg = self.cfg("tl-sft" if s.tl else s.construction, mode=s.construction)
        info["budgets"]["sft"] = {"steps": sft_cfg.sft_steps, "batch": sft_cfg.train_batch_size or sft_cfg.batch_size,
                                  "lora_rank": sft_cfg.sft_lora_rank, "lr": sft_cfg.sft_lr,
                                  "mae": s.tl, "pkt_wmax": 9.0 if s.tl else 0.0}
        sft = self.sft(s.construction, s.tl)
        if s.kind == "sft":
            return sft, info
        cfg = self.system_cfg(s)
        prompts = self.prompts(s)
        info["data"]["preference_prompt_records"] = _lines(prompts)
        if s.kind == "sft-plus":  # the SFT model, more SFT on the preference prompts' gold turns
            steps = self.preference_steps(s)
            plus = dataclasses.replace(cfg, sft_steps=steps)
            info["budgets"]["sft_plus"] = {"steps": steps, "batch": cfg.train_batch_size or cfg.batch_size,
                                           "lora_rank": cfg.sft_lora_rank, "lr": cfg.sft_lr,
                                           "steps_of": (self.budget or s).name}
            return self._timed(f"sft-plus {s.name}", train_and_export,
                               self.train_cfg(P.sft_config(plus, sft, prompts))), info
        if s.kind == "dpo":
            pairs, audit = self.pairs(s)
            steps = self.preference_steps(s)
            info["data"]["pairs"] = _lines(pairs)
            info["audit"] = audit
            info["budgets"]["dpo"] = {"steps": steps, "batch": cfg.train_batch_size or cfg.batch_size,
                                      "lora_rank": cfg.dpo_lora_rank, "lr": cfg.dpo_lr, "beta": cfg.beta,
                                      "epsilon": cfg.epsilon, "sample_mode": s.sample_mode,
                                      "esm_weights": s.weights or "default", "recipe": dict(s.recipe),
                                      "steps_of": (self.budget or s).name}
            dpo_cfg = self.train_cfg(P.dpo_config(cfg, sft, pairs, steps))
            return self._timed(f"dpo {s.runs_as or s.name}", train_and_export, dpo_cfg), info
        rl_cfg = self.train_cfg(rl_config(cfg, sc, sft, prompts, s))
        info["budgets"]["rl"] = {"algorithm": s.rl, "reward": s.reward, "steps": rl_cfg.steps,
                                 "prompts_per_step": rl_cfg.rl.prompts_per_step, "group_size": rl_cfg.rl.group_size,
                                 "episodes": rl_cfg.steps * rl_cfg.rl.prompts_per_step * rl_cfg.rl.group_size,
                                 "lora_rank": rl_cfg.lora.rank, "lr": rl_cfg.optim.lr, "kl_coef": rl_cfg.rl.kl_coef}
        return self._timed(f"{s.rl} {s.name}", train_and_export, rl_cfg), info


def split_validation(train: Path, n: int) -> Path:
    """``train`` without its last ``n`` records (``train-fit.jsonl``, returned) and those records
    (``validation.jsonl``), next to it; written once."""
    fit, val = train.with_name("train-fit.jsonl"), train.with_name("validation.jsonl")
    if not (fit.is_file() and val.is_file()):
        lines = [line for line in train.read_text().splitlines() if line.strip()]
        if len(lines) <= n:
            raise ConfigError(f"{train}: {len(lines)} records, too few to set {n} aside for validation")
        val.write_text("".join(line + "\n" for line in lines[-n:]))
        fit.write_text("".join(line + "\n" for line in lines[:-n]))
    return fit


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
    if system.kind == "zero-shot":  # the base model on the fixed BFCL entries, greedy: the same for every seed
        bfcl_path = seed_run.root.parent / f"{system.name}-eval-bfcl.json"
    if not held_path.is_file():
        cfg = seed_run.cfg(system.name)
        t0 = time.perf_counter()
        validation = system.eval_split == "validation"
        data = seed_run.validation_file() if validation else seed_run.test_file()
        if validation:  # every validation record
            cfg = dataclasses.replace(cfg, eval_records=_lines(data))
        result = P.evaluate_model(cfg, model_dir, data, system.name)
        write_json(turns_path(held_path), [turn_row(r) for r in result.pop("per_turn", [])])
        write_json(held_path, result)
        seed_run.seconds[f"evaluate {system.name}"] = time.perf_counter() - t0
    bfcl = None
    if sc.bfcl_limit != 0 and system.eval_split == "test":
        if not bfcl_path.is_file():
            t0 = time.perf_counter()
            r = run_bfcl(sc.bfcl_categories, name=system.name, model=model_dir, limit=sc.bfcl_limit,
                         max_new_tokens=sc.bfcl_max_new_tokens, batch_size=sc.pipeline.batch_size,
                         progress=sc.pipeline.progress)
            esm_all = dict(r["esm"][system.name])
            esm_all.pop("per_turn", None)
            write_json(bfcl_path, {"mode": r["mode"], "limit": r["limit"], "categories": r["categories"],
                               "leaderboard": r["leaderboard"], "esm": esm_all,
                               "prompts_too_long": len(r["prompts_too_long"]),
                               "missing_predictions": r["missing_predictions"]})
            seed_run.seconds[f"bfcl {system.name}"] = time.perf_counter() - t0
        bfcl = json.loads(bfcl_path.read_text())
    return json.loads(held_path.read_text()), bfcl


def turns_path(path: Path) -> Path:
    """``seed0.json`` -> ``seed0.turns.json``: the per-turn rows next to a result."""
    return path.with_name(path.stem + ".turns.json")


def turn_row(row: dict[str, Any]) -> dict[str, Any]:
    """One evaluated turn as the statistics and a re-scoring need it: key, kind, the prediction, and
    its ESM score and errors (call turns) or return-value verdict (answer turns)."""
    keep = ("id", "turn", "kind", "prediction", "score", "errors", "return_values", "no_call", "category")
    return {k: row[k] for k in keep if k in row}


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as JSON, written aside and renamed into place: a reader never sees half a file."""
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
        "eval": {"split": system.eval_split,
                 "heldout_records": (info["data"].get("validation_records") if system.eval_split == "validation"
                                     else min(sc.pipeline.eval_records, info["data"]["test_records"])),
                 "max_new_tokens": sc.pipeline.max_new_tokens},
        # this invocation's time on the stages this system used first (shared stages count once)
        "stage_seconds": {k: round(v, 1) for k, v in seed_run.seconds.items() if k not in before},
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "heldout": held, "bfcl": bfcl,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    turns = turns_path(seed_run.root / system.name / "eval-heldout.json")
    if turns.is_file():  # written before the run file: a run file always has its turns beside it
        write_json(turns_path(path), json.loads(turns.read_text()))
    write_json(path, run)
    say(f"wrote {path}")
    return path
