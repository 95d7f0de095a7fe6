"""The fused CPU attention kernel (``ttpa_jax.cpu.attention_kernel``) against the dense computation: causal rows with
left padding, packed records, shared-prefix branches, a cache longer than the queries, grouped heads of
64 and 128, and random masks; values and gradients to 1e-5, on one device and on meshes of 8; where
``attend`` uses it, and what happens without it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ttpa_jax.cpu import attention_kernel as cpu_kernel
from ttpa_jax.model import attention as A


def _case(name, seed=0):
    """q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S] for one of the masks the model builds."""
    rng = np.random.default_rng(seed)
    B, T, S, N, K, H = {"causal": (2, 150, 150, 9, 3, 64), "packed": (2, 200, 200, 6, 2, 64),
                        "branches": (1, 170, 170, 9, 3, 64), "cache": (2, 70, 96, 9, 3, 64),
                        "wide": (2, 100, 100, 14, 2, 128)}[name]
    q = jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((B, S, K, H)), jnp.float32) for _ in range(2))
    cols = jnp.broadcast_to(jnp.arange(T), (B, T))
    kv = np.ones((B, S), bool)
    seg = branch = None
    if name in ("causal", "wide"):
        kv[0, :7] = False  # left padding: the first queries see no key
    elif name == "packed":
        seg = np.zeros((B, S), np.int32)
        seg[0, :60], seg[0, 60:170], seg[1, :130] = 1, 2, 1
        kv = seg > 0
        seg = jnp.asarray(seg)
    elif name == "branches":  # a 100-token trunk, then two suffixes of 40 and 30
        branch = jnp.asarray(np.r_[np.zeros(100), np.ones(40), np.full(30, 2)][None].astype(np.int32))
    else:  # a prefill of 70 queries into a 96-key cache, the second row 10 tokens shorter
        kv[:, 70:] = False
        kv[1, 60:] = False
    mask = A.attention_mask(cols, jnp.asarray(kv), S, segment_ids=seg, branch_ids=branch)
    return q, k, v, mask


def _dense(q, k, v, mask):
    B, T, N, H = q.shape
    return A._dense(q.reshape(B, T, k.shape[2], -1, H), k, v, mask).reshape(B, T, N * H)


def _kernel(q, k, v, mask):
    B, T, N, H = q.shape
    return cpu_kernel.fused(A._scaled(q.reshape(B, T, k.shape[2], -1, H)), k, v, mask).reshape(B, T, N * H)


def _assert_kernel_equals_dense(q, k, v, mask, rng):
    """Outputs to 1e-5 on every query that sees a key, zero on the others; gradients of a random
    projection of the outputs to 1e-5."""
    seen = np.asarray(mask).any(-1)  # [B, T] queries that see a key
    w = jnp.asarray(rng.standard_normal((*q.shape[:2], q.shape[2] * q.shape[3])), jnp.float32) * seen[..., None]
    dense, fused = np.asarray(_dense(q, k, v, mask)), np.asarray(jax.jit(_kernel)(q, k, v, mask))
    np.testing.assert_allclose(fused[seen], dense[seen], atol=1e-5, rtol=0)
    assert not np.any(fused[~seen])  # a query that sees no key: zero
    grads = [jax.jit(jax.grad(lambda q, k, v, f=f: (f(q, k, v, mask) * w).sum(), (0, 1, 2)))(q, k, v)
             for f in (_dense, _kernel)]
    for g0, g1 in zip(*grads):
        np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["causal", "packed", "branches", "cache", "wide"])
def test_kernel_equals_dense_in_values_and_gradients(name):
    _assert_kernel_equals_dense(*_case(name), np.random.default_rng(1))


@settings(max_examples=12, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(2, 140), extra=st.integers(0, 70), K=st.integers(1, 3),
       G=st.integers(1, 4), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_kernel_equals_dense_on_any_mask(B, T, extra, K, G, density, seed):
    """Any boolean mask, not only the model's (blocks partly, wholly or never seen, rows that see
    nothing), any length that is no multiple of the kernel's blocks, any grouping of heads."""
    rng = np.random.default_rng(seed)
    S = T + extra
    q = jnp.asarray(rng.standard_normal((B, T, K * G, 64)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((B, S, K, 64)), jnp.float32) for _ in range(2))
    _assert_kernel_equals_dense(q, k, v, jnp.asarray(rng.random((B, T, S)) < density), rng)


@pytest.fixture
def kernel_mode(monkeypatch):
    """Sets ``TTPA_JAX_CPU_KERNEL`` for one test, the per-process decisions forgotten before and after."""
    def set_mode(mode):
        monkeypatch.setenv("TTPA_JAX_CPU_KERNEL", mode)
        cpu_kernel.enabled.cache_clear()
    yield set_mode
    monkeypatch.undo()
    cpu_kernel.enabled.cache_clear()


def test_attend_uses_the_kernel_where_it_applies(kernel_mode):
    """fp32 with head dim 64 goes through the FFI call; head dim 16 and bf16 take the tiles."""
    kernel_mode("1")
    q, k, v, mask = _case("causal")

    def calls(*args):
        return "ffi_call" in str(jax.make_jaxpr(lambda *a: A.attend(*a, mask))(*args))

    assert calls(q, k, v)
    assert not calls(q[..., :16], k[..., :16], v[..., :16])
    assert not calls(*(x.astype(jnp.bfloat16) for x in (q, k, v)))


def test_kernel_on_a_mesh_equals_one_device():
    """Rows sharded over 8 devices (the kernel is batch-partitionable) and over 4 x 2 (batch x heads): the
    single-device values and gradients."""
    q, k, v, mask = _case("packed")
    q, k, v, mask = (jnp.concatenate([x] * 4) for x in (q, k, v, mask))  # 8 rows
    loss = jax.jit(jax.value_and_grad(lambda q, k, v: (_kernel(q, k, v, mask) ** 2).sum(), (0, 1, 2)))
    ref = loss(q, k, v)
    for shape, spec in (((8,), P("data")), ((4, 2), P("data", None, "model"))):
        mesh = jax.make_mesh(shape, ("data", "model")[:len(shape)])
        put = lambda x: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
        sharded = loss(put(q), put(k), put(v))
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(sharded)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4, rtol=1e-6)


def test_no_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("TTPA_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        cpu_kernel._build()


@pytest.mark.parametrize("env, warned", [({"TTPA_JAX_CPU_KERNEL": "0"}, False), ({"CXX": "no-such-compiler"}, True)])
def test_without_the_kernel_attend_takes_the_tiles(env, warned, tmp_path):
    """Turned off, or no compiler (one warning): the same attention through the tiles, no FFI call."""
    code = ("import warnings, jax, jax.numpy as jnp\n"
            "from ttpa_jax.model.attention import attend, attention_mask\n"
            "q, k = jnp.ones((1, 300, 3, 64)), jnp.ones((1, 300, 1, 64))\n"
            "mask = attention_mask(jnp.arange(300)[None], jnp.ones((1, 300), bool), 300)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    jaxpr = str(jax.make_jaxpr(lambda q, k: attend(q, k, k, mask))(q, k))\n"
            "print('ffi_call' in jaxpr, [str(x.message) for x in w])")
    env = {**os.environ, "TTPA_CACHE": str(tmp_path), **env}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ffi, messages = out.stdout.strip().split(" ", 1)
    assert ffi == "False"
    if warned:
        assert "CPU attention kernel unavailable" in messages and "no C++ compiler (no-such-compiler)" in messages
    else:
        assert messages == "[]"


@pytest.fixture
def fake_library(monkeypatch, tmp_path):
    """The kernel as built (``available``) with its library at a fresh path, so that the calibration
    beside it starts empty; returns the path where the calibration is stored."""
    monkeypatch.setattr(cpu_kernel, "available", lambda: True)
    monkeypatch.setattr(cpu_kernel, "_build", lambda: tmp_path / "attention_cpu-test.so")
    return tmp_path / "attention_cpu-test.json"


@pytest.mark.parametrize("kernel_s, tiles_s, used", [(0.5, 1.0, True), (1.0, 1.0, True), (3.0, 1.0, False)])
def test_auto_mode_uses_the_kernel_only_where_it_measured_no_slower(kernel_mode, fake_library, capsys,
                                                                    kernel_s, tiles_s, used):
    fake_library.write_text(json.dumps({"kernel_s": kernel_s, "tiles_s": tiles_s, "isa": "avx2"}))
    kernel_mode("auto")
    assert cpu_kernel.enabled() is used
    q, k, v, _ = _case("causal")
    assert cpu_kernel.applies(q.reshape(2, 150, 3, 3, 64), k, v) is used
    err = capsys.readouterr().err
    assert ("attention uses the tiles" in err and "3.00x" in err and "avx2" in err) is not used
    assert len(err.strip().splitlines()) == (0 if used else 1)  # one line, once per process
    kernel_mode("1")
    assert cpu_kernel.enabled()  # forced: no calibration read
    kernel_mode("0")
    assert not cpu_kernel.enabled()


def test_calibration_runs_once_per_library_and_is_kept(kernel_mode, fake_library, monkeypatch):
    """No stored calibration: the calibration module runs (in a subprocess), its answer is stored beside
    the library with the ISA, and read back after that without running again."""
    runs = []

    def fake_run(cmd, **kwargs):
        runs.append(cmd)
        assert cmd[1:3] == ["-m", "ttpa_jax.model.kernel_calibration"]
        Path(cmd[-1]).write_text(json.dumps({"kernel_s": 2.0, "tiles_s": 1.0}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(cpu_kernel.subprocess, "run", fake_run)
    kernel_mode("auto")
    assert not cpu_kernel.enabled()
    stored = json.loads(fake_library.read_text())
    assert stored == {"kernel_s": 2.0, "tiles_s": 1.0, "isa": cpu_kernel.isa()}
    cpu_kernel.enabled.cache_clear()
    assert not cpu_kernel.enabled() and len(runs) == 1


def test_a_failed_calibration_warns_once_and_takes_the_tiles(kernel_mode, fake_library, monkeypatch):
    monkeypatch.setattr(cpu_kernel.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nMemoryError"))
    kernel_mode("auto")
    with pytest.warns(UserWarning, match=r"not calibrated, using the tiled attention: calibration failed \(exit 1\): MemoryError$"):
        assert not cpu_kernel.enabled()
    assert not fake_library.exists()  # nothing stored: the next process tries again


def test_a_bad_mode_is_a_clear_error(kernel_mode):
    kernel_mode("yes")
    with pytest.raises(ValueError, match="TTPA_JAX_CPU_KERNEL='yes': expected auto, 1 or 0"):
        cpu_kernel.enabled()


def test_the_calibration_measures_both_paths(monkeypatch):
    """The calibration module itself, on a shorter row: both medians, positive."""
    from ttpa_jax.model import kernel_calibration as cal

    monkeypatch.setattr(cal, "T", 256)
    timing = cal.measure()
    assert set(timing) == {"kernel_s", "tiles_s"} and min(timing.values()) > 0
