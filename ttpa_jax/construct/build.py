"""Build an SFT tool-use dataset by reversed construction (or forward, the ablation baseline).

    python -m ttpa_jax.construct --out data/sft.jsonl --num 500
    python -m ttpa_jax.construct --out data/sft.jsonl --num 500 --split 0.2   # + data/sft.test.jsonl
    OPENAI_API_KEY=... python -m ttpa_jax.construct --generator openai --base-url http://localhost:8000/v1 \\
        --model Qwen/Qwen2.5-72B-Instruct --tools my_tools.json --out data/sft.jsonl --num 2000

From Python: ``summary = construct(ConstructConfig(out=Path("sft.jsonl"), num=100))``.

The output is append-only; each record is written whole and fsynced. Killing a run and rerunning the
same command continues where it stopped. Record ids are ``rev-s{seed}-{index:06d}`` (``fwd-`` in
forward mode; ``-test-`` in the held-out file), so a record's id does not depend on run order.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
from tqdm.auto import tqdm

from ttpa_jax.construct.checks import check_record
from ttpa_jax.construct.episodes import EpisodeSettings, add_recovery, new_episode, run_episode, to_record
from ttpa_jax.construct.generators import make_generator
from ttpa_jax.construct.generators.openai_chat import OpenAISettings
from ttpa_jax.construct.generators.protocol import Episode, GenerationFailure, GenerationStats, Generator
from ttpa_jax.construct.toolbox import MistakeMaker, executor_for, mistake_for, spec_for
from ttpa_jax.core.cli import run, stage_main
from ttpa_jax.core.errors import ConfigError
from ttpa_jax.core.record_log import RecordLog
from ttpa_jax.tools.library import BUNDLED, Tool, fingerprint, load_library

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Use the available tools when they help answer the user."


@dataclass
class ConstructConfig:
    """Build an SFT tool-use dataset (JSONL) by reversed construction: scenario, tool calls, answer,
    and the user query last."""

    out: Path
    """Output JSONL file. Appended to: rerunning the same command continues an interrupted run."""
    tools: str = BUNDLED
    """Tool library: `bundled` (the package's own, 67 tools in 10 domains) or a JSON file holding a
    list of OpenAI function schemas."""
    generator: Literal["template", "openai"] = "template"
    """`template`: offline and deterministic from --seed, needs a bundled executor for every tool.
    `openai`: any OpenAI-compatible endpoint (key from the OPENAI_API_KEY environment variable);
    tools without an executor are played by the model."""
    num: int = 100
    """Number of records to make (train and test together when --split is set)."""
    seed: int = 0
    """Seed of every random choice; with the template generator the output is a function of it."""
    episode: Annotated[EpisodeSettings, tyro.conf.OmitArgPrefixes] = EpisodeSettings()
    """How each record is drawn: --mode, --min-calls, --max-calls, --follow-up, --min-candidates, --max-candidates."""
    error_recovery: float = 0.0
    """Fraction of records with an error-recovery episode: one call is first made with a plausible
    wrong argument value (a misspelled city, an id never issued, a past date, ...) that the tool
    refuses, and its error result stays in the record (TL-Training's MAE masks that call); the next
    call corrects it. Only training records (not the --split file), only calls of tools with a
    bundled executor that has such a mistake."""
    split: float = 0.0
    """Held-out fraction. Tools are partitioned first (per domain). This fraction of the records uses
    only the held-out tools and goes to OUT with `.test` inserted before its suffix (data/sft.jsonl
    gives data/sft.test.jsonl); the rest use only the other tools and go to OUT. 0: OUT alone."""
    max_attempts: int = 4
    """Attempts per record before it is given up (a rejected or failed attempt is retried with a
    new draw)."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    """System message of every record; empty for none."""
    concurrency: int = 8
    """Records built at the same time (openai: requests in flight)."""
    openai: Annotated[OpenAISettings, tyro.conf.OmitArgPrefixes] = OpenAISettings()
    """The endpoint of the openai generator: --base-url, --model, --temperature, --max-retries, ..."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class ConstructSummary:
    """What a run did. ``rejected`` counts each broken rule (a record may break several);
    ``examples`` keeps the first detail seen for each rejection or failure reason."""

    requested: int = 0
    already_present: int = 0
    made: int = 0
    recovered: int = 0
    given_up: int = 0
    attempts: int = 0
    rejected_instances: int = 0
    rejected: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    stats: GenerationStats = field(default_factory=GenerationStats)
    outputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rejected"], out["failures"] = dict(self.rejected), dict(self.failures)
        return out

    def format(self) -> str:
        s = self.stats
        lines = [f"records: {self.made} made, {self.already_present} already present, "
                 f"{self.given_up} given up, of {self.requested} requested ({', '.join(self.outputs)})",
                 f"attempts: {self.attempts}; rejected: {self.rejected_instances}; "
                 f"failed: {sum(self.failures.values())}",
                 f"error recovery: {self.recovered} of the records made have a failed call and its correction"]
        for kind, counts in (("rejected", self.rejected), ("failed", self.failures)):
            lines += [f"  {kind}, {reason}: {n} (e.g. {self.examples.get(reason, '')[:160]})"
                      for reason, n in sorted(counts.items())]
        if s.requests:
            lines.append(f"requests: {s.requests}; retries: {s.retries}; malformed replies: {s.malformed}; "
                         f"structured-output fallbacks: {s.structured_output_fallbacks}")
            lines.append(f"tokens: {s.prompt_tokens} prompt + {s.completion_tokens} completion" if s.tokens_reported
                         else "tokens: not reported by the endpoint")
        return "\n".join(lines)


@dataclass
class Side:
    """One output file: its tools, its record count and its id prefix."""

    name: str
    path: Path
    tools: list[Tool]
    count: int

    def record_id(self, mode: str, seed: int, index: int) -> str:
        infix = "-test" if self.name == "test" else ""
        return f"{'rev' if mode == 'reversed' else 'fwd'}-s{seed}{infix}-{index:06d}"


def held_out_path(out: Path) -> Path:
    """``data/sft.jsonl`` -> ``data/sft.test.jsonl``; ``data/sft`` -> ``data/sft.test``."""
    return out.with_name(f"{out.stem}.test{out.suffix}") if out.suffix else out.with_name(out.name + ".test")


def domain_map(tools: list[Tool]) -> dict[str, str]:
    """Tool name -> domain (bundled tools have one; a user's other tools share the domain `user`)."""
    return {t.name: spec.domain if (spec := spec_for(t)) else "user" for t in tools}


def partition_tools(tools: list[Tool], fraction: float, seed: int) -> tuple[list[Tool], list[Tool]]:
    """Split the library into (train, test) tools: per domain, about ``fraction`` of its tools
    (rounded, at least one when the domain has two or more) go to test."""
    domain_of = domain_map(tools)
    train: list[Tool] = []
    test: list[Tool] = []
    for domain in sorted(set(domain_of.values())):
        members = sorted((t for t in tools if domain_of[t.name] == domain), key=lambda t: t.name)
        random.Random(f"{seed}|split|{domain}").shuffle(members)
        k = round(len(members) * fraction)
        if fraction > 0 and len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        test += members[:k]
        train += members[k:]
    return train, test


def check_config(cfg: ConstructConfig) -> None:
    problems = []
    if cfg.num < 0:
        problems.append("--num must be >= 0")
    if not 1 <= cfg.episode.min_calls <= cfg.episode.max_calls:
        problems.append("need 1 <= --min-calls <= --max-calls")
    if not 2 <= cfg.episode.min_candidates <= cfg.episode.max_candidates:
        problems.append("need 2 <= --min-candidates <= --max-candidates")
    if not 0 <= cfg.split < 1:
        problems.append("--split must be in [0, 1)")
    if not 0 <= cfg.episode.follow_up <= 1:
        problems.append("--follow-up must be in [0, 1]")
    if not 0 <= cfg.error_recovery <= 1:
        problems.append("--error-recovery must be in [0, 1]")
    if cfg.concurrency < 1 or cfg.max_attempts < 1:
        problems.append("--concurrency and --max-attempts must be >= 1")
    if problems:
        raise ConfigError("; ".join(problems))


def run_signature(cfg: ConstructConfig, gen: Generator, library: list[Tool]) -> dict[str, Any]:
    """The settings a record's content depends on, written into every record's ``meta``; a resumed
    file must have been made with the same ones. A setting in ``OMITTED_AT_DEFAULT`` is written only
    when it differs from its default."""
    signature = {**gen.describe(), "mode": cfg.episode.mode, "seed": cfg.seed, "library": fingerprint(library),
                 "split_fraction": cfg.split, "min_calls": cfg.episode.min_calls, "max_calls": cfg.episode.max_calls,
                 "follow_up": cfg.episode.follow_up, "min_candidates": cfg.episode.min_candidates,
                 "max_candidates": cfg.episode.max_candidates, "system_prompt": cfg.system_prompt,
                 "error_recovery": cfg.error_recovery}
    return {k: v for k, v in signature.items() if k not in OMITTED_AT_DEFAULT or v != OMITTED_AT_DEFAULT[k]}


# Recorded in meta but free to change between a run and its continuation.
NOT_COMPARED_ON_RESUME = {"base_url"}
# Settings left out of meta at their default (records made before the setting existed stay valid).
OMITTED_AT_DEFAULT: dict[str, Any] = {"error_recovery": 0.0}


def _setting(meta: dict[str, Any], key: str) -> Any:
    return meta.get(key, OMITTED_AT_DEFAULT.get(key))


def _check_resumable(log: RecordLog, signature: dict[str, Any]) -> None:
    for old in list(log.records.values())[:1]:
        keys = [*signature, *(k for k in OMITTED_AT_DEFAULT if k not in signature)]
        diff = [k for k in keys if k not in NOT_COMPARED_ON_RESUME and _setting(old, k) != _setting(signature, k)]
        if diff:
            raise ConfigError(f"{log.path} holds records made with other settings ({', '.join(diff)}); "
                              "rerun with the same settings to continue it, or write to another --out")


def draw_recovery(cfg: ConstructConfig, side: Side, index: int, attempt: int, ep: Episode,
                  mistakes: dict[str, MistakeMaker | None]) -> bool:
    """With probability ``cfg.error_recovery``, give a training record an error-recovery episode.

    The draw has its own random stream, seeded like the episode's: the rest of the record is the same
    as without it, and with a fraction of 0 nothing is drawn at all.
    """
    if cfg.error_recovery <= 0 or side.name != "train":
        return False
    rng = random.Random(f"{cfg.seed}|{side.name}|{index}|{attempt}|recovery")
    return rng.random() < cfg.error_recovery and add_recovery(ep, rng, mistakes)


async def _fill_side(cfg: ConstructConfig, side: Side, gen: Generator, signature: dict[str, Any],
                     summary: ConstructSummary, bar) -> None:
    settings = cfg.episode
    executors = {t.name: executor_for(t) for t in side.tools}
    mistakes = {t.name: mistake_for(t) for t in side.tools}
    domain_of = domain_map(side.tools)
    with RecordLog(side.path) as log:
        _check_resumable(log, signature)
        ids = [side.record_id(cfg.episode.mode, cfg.seed, i) for i in range(side.count)]
        pending = iter([i for i, rid in enumerate(ids) if rid not in log])
        present = sum(rid in log for rid in ids)
        summary.already_present += present
        bar.update(present)

        async def make(index: int) -> None:
            for attempt in range(cfg.max_attempts):
                summary.attempts += 1
                rng = random.Random(f"{cfg.seed}|{side.name}|{index}|{attempt}")
                ep = new_episode(rng, side.tools, domain_of, settings)
                try:
                    await run_episode(gen, ep, executors)
                except GenerationFailure as e:
                    summary.failures[e.reason] += 1
                    summary.examples.setdefault(e.reason, e.detail)
                    continue
                draw_recovery(cfg, side, index, attempt, ep, mistakes)
                meta = {**signature, "split": side.name, "index": index, "attempt": attempt}
                record = to_record(ep, ids[index], cfg.system_prompt, meta)
                rejections = check_record(record, cfg.episode.min_calls, cfg.episode.max_calls)
                if rejections:
                    summary.rejected_instances += 1
                    summary.rejected.update({r.reason for r in rejections})
                    for r in rejections:
                        summary.examples.setdefault(r.reason, r.detail)
                    continue
                log.append(record)
                summary.made += 1
                summary.recovered += "failed_calls" in record["meta"]
                bar.update(1)
                return
            summary.given_up += 1

        async def worker() -> None:
            for index in pending:
                await make(index)

        workers = [asyncio.ensure_future(worker()) for _ in range(cfg.concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            # Stop the other workers before the file closes (a refused endpoint ends the run).
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise


def plan_sides(cfg: ConstructConfig, library: list[Tool]) -> list[Side]:
    if cfg.split <= 0:
        return [Side("train", cfg.out, library, cfg.num)]
    train, test = partition_tools(library, cfg.split, cfg.seed)
    for name, tools in (("train", train), ("test", test)):
        if len(tools) < 2:
            raise ConfigError(f"--split {cfg.split} leaves {len(tools)} {name} tool(s); at least 2 are needed")
    n_test = round(cfg.num * cfg.split)
    return [Side("train", cfg.out, train, cfg.num - n_test), Side("test", held_out_path(cfg.out), test, n_test)]


async def construct_async(cfg: ConstructConfig) -> ConstructSummary:
    """``construct`` for callers already inside an event loop."""
    check_config(cfg)
    library = load_library(cfg.tools)
    sides = plan_sides(cfg, library)
    try:
        gen = make_generator(cfg, library)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    summary = ConstructSummary(requested=cfg.num, stats=gen.stats, outputs=[str(s.path) for s in sides])
    signature = run_signature(cfg, gen, library)
    try:
        with tqdm(total=cfg.num, disable=not cfg.progress, desc="construct", unit="rec", file=sys.stderr) as bar:
            for side in sides:
                await _fill_side(cfg, side, gen, signature, summary, bar)
    finally:
        await gen.aclose()
    return summary


def construct(cfg: ConstructConfig) -> ConstructSummary:
    """Build the dataset described by ``cfg``; return what was done.

    Raises ``ConfigError``, ``DataError`` or ``EndpointError`` (all ``UserError``) for problems the
    user must fix.
    """
    return asyncio.run(construct_async(cfg))


@stage_main
def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(ConstructConfig, args=argv, prog="python -m ttpa_jax.construct")
    summary = construct(cfg)
    print(summary.format(), file=sys.stderr)
    return 0 if summary.made + summary.already_present == summary.requested else 1


if __name__ == "__main__":
    run(main)
