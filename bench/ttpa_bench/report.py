"""The report format shared by the benchmark scripts: a machine line, medians of alternating runs
(and the range of their per-round ratios), and result lines of one shape (a label column, a number, its unit)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time

LABEL = 28  # width of the label column


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def cores() -> int:
    """CPU cores this process may run on (an affinity mask set before import counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_line() -> str:
    """The CPU (with its widest vector instruction set: a figure from an AVX-512 machine says nothing of an
    AVX2-only one), cores, accelerator, load and versions."""
    import jax
    import torch

    from ttpa_jax.cpu.attention_kernel import isa

    dev = jax.devices()[0]
    acc = "" if dev.platform == "cpu" else f", {dev.device_kind}"
    n = cores()
    return (f"machine: {cpu_name()} ({isa()}), {n} core{'s' * (n != 1)}{acc}, load average "
            f"{os.getloadavg()[0]:.1f}; jax {jax.__version__}, torch {torch.__version__}")


def alternating_times(fns, runs: int, warmup: int = 1) -> list[list[float]]:
    """Wall times of each function over ``runs`` rounds after ``warmup`` calls (the first also
    compiles). Each round calls every function once, so a load change on the machine hits all of them
    alike, and the per-round ratios show how much the machine moved (``round_ratios``)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return times


def median_times(fns, runs: int, warmup: int = 1) -> list[float]:
    """Median wall time of each function over ``alternating_times``' rounds."""
    return [statistics.median(ts) for ts in alternating_times(fns, runs, warmup)]


def round_ratios(slow: list[float], fast: list[float]) -> tuple[float, float]:
    """Lowest and highest ratio slow / fast within one round of ``alternating_times``."""
    r = [s / f for s, f in zip(slow, fast)]
    return min(r), max(r)


def rate(label: str, n: float, seconds: float, unit: str = "tok/s") -> None:
    """``label   12345.6 tok/s  (83 ms)``: n items in ``seconds``."""
    print(f"  {label:<{LABEL}} {n / seconds:8.1f} {unit}  ({seconds * 1e3:.0f} ms)")


def millis(label: str, seconds: float) -> None:
    print(f"  {label:<{LABEL}} {seconds * 1e3:8.0f} ms")


def ratio(label: str, x: float, spread: tuple[float, float] | None = None) -> None:
    """``label   1.23x``, with ``spread`` (``round_ratios``) the range over the rounds after it."""
    note = f"  (rounds {spread[0]:.2f}-{spread[1]:.2f}x)" if spread else ""
    print(f"  {label:<{LABEL}} {x:8.2f}x{note}")


def value(label: str, x: float, unit: str, note: str = "") -> None:
    print(f"  {label:<{LABEL}} {x:8.1f} {unit}" + (f"  ({note})" if note else ""))


def base_model_dir(model: str, layers: int, tmp: str) -> str:
    """The HF directory of ``model`` (a base model name, FILE.gguf or directory; GGUF converted once into
    the cache); ``layers`` > 0 keeps its first N decoder layers (real weights), saved into ``tmp``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ttpa_jax.model.base_models import resolve_model

    d = str(resolve_model(model))
    if not layers:
        return d
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    hf.model.layers = hf.model.layers[:layers]
    hf.config.num_hidden_layers = layers
    hf.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(d).save_pretrained(tmp)
    return tmp


def best_time(fn, runs: int = 5) -> float:
    """Fastest of ``runs`` calls after one warm-up call: what the cores reach when other work leaves them alone."""
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bandwidth() -> float:
    """Best bytes/s of a jitted read-modify-write over 256 MiB of float32 (read + write counted)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((64 * 2**20,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0001)
    return 2 * x.nbytes / best_time(lambda: f(x).block_until_ready())
