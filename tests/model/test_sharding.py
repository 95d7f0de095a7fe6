"""Sharded runs against single-device runs on 8 fake CPU devices, checkpoints across mesh shapes, and
two processes on one machine against one process."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import metrics, preference_records, write_jsonl
from jax.sharding import PartitionSpec as P

import ttpa_jax
from ttpa_jax.decode.loop import generate
from ttpa_jax.model.lora import LoraConfig
from ttpa_jax.model.sharding import Placement, make_mesh, mesh_shape, place_state, spec_for
from ttpa_jax.train.config import DataConfig, MeshConfig, OptimConfig
from ttpa_jax.train.dpo.config import DpoArgs
from ttpa_jax.train.dpo.unit import UNIT as DPO
from ttpa_jax.train.loader import Loader
from ttpa_jax.train.loop import train

MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)]


def dpo_config(model_dir, data, out, mesh, **kw) -> DpoArgs:
    base = dict(model=str(model_dir), data=str(data), out=str(out), mesh=MeshConfig(*mesh),
                lora=LoraConfig(rank=8, alpha=16), dataset=DataConfig(batch_size=8, max_length=512),
                optim=OptimConfig(lr=1e-2, warmup_steps=0), save_every=100, seed=0)
    base.update(kw)
    return DpoArgs(**base)



def test_mesh_shape_and_specs():
    assert jax.device_count() == 8
    assert mesh_shape(1, -1, 1, 8) == (1, 8, 1) and mesh_shape(2, -1, 2, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="at most one"):
        mesh_shape(-1, -1, 1, 8)
    mesh = make_mesh(2, 2, 2)
    assert spec_for(("vocab", "embed"), (512, 64), mesh) == P("tensor", "fsdp")
    assert spec_for(("q_heads", "embed"), (63, 64), mesh) == P(None, "fsdp")  # 63 does not divide: replicated
    assert spec_for(("batch", "seq", "act_embed"), (8, 16, 64), mesh) == P(("data", "fsdp"), None, None)


@pytest.fixture(scope="module")
def single_device_run(tiny_model_dir, tmp_path_factory):
    """Pair data (short tool schemas keep sequences short) and a 4-step single-device DPO run."""
    out = tmp_path_factory.mktemp("single")
    recs = preference_records(16, seed=5)
    for r in recs:
        r["tools"] = [{"type": "function", "function": {"name": n}} for n in ("get_weather", "get_time")]
    data = write_jsonl(out / "pairs.jsonl", recs)
    train(dpo_config(tiny_model_dir, data, out / "run", (1, 1, 1), steps=4), progress=False)
    return data, out / "run" / "data" / "preference.arrayrecord", metrics(out / "run")


def test_lora_dpo_steps_match_single_device(tiny_model_dir, single_device_run):
    _, records, reference = single_device_run
    for mesh in MESHES:
        cfg = dpo_config(tiny_model_dir, "unused", "unused", mesh)
        placement = Placement(make_mesh(*mesh))
        st = DPO.trainer(cfg, placement, steps=4)
        loader = Loader(records, "arrayrecord", global_batch=8, seed=0, shuffle=True, pad_id=st.pad_id,  # as train makes it
                        pad_multiple=64, max_length=512, layout=DPO.layout(cfg), row_multiple=placement.batch_divisor)
        for ref in reference[:2]:
            got = {k: float(v) for k, v in st.step(next(loader), jax.random.fold_in(jax.random.key(0), ref["step"])).items()}
            for k in ("loss", "grad_norm", "rewards/margins", "logps/chosen"):
                assert abs(got[k] - ref[k]) < 1e-5 * max(1.0, abs(ref[k])), (mesh, ref["step"], k)


def test_reference_log_probs_match_on_a_mesh(tiny_model_dir, single_device_run, tmp_path):
    import shutil

    from ttpa_jax.train.dpo.reference import precompute_reference
    from ttpa_jax.train.example_proto import decode_example
    from ttpa_jax.train.recordio import open_source

    _, records, _ = single_device_run
    logps = {}
    for mesh in [(1, 1, 1), (2, 2, 2)]:
        d = tmp_path / "x".join(map(str, mesh))
        d.mkdir()
        for f in (records, records.parent / "stats.json"):
            shutil.copy(f, d / f.name)
        cfg = dpo_config(tiny_model_dir, "unused", "unused", mesh, logits_chunk=16)
        out = precompute_reference(DPO.trainer(cfg, Placement(make_mesh(*mesh)), steps=4), d / records.name, cfg,
                                   DPO.layout(cfg))
        src = open_source(out, "arrayrecord")
        logps[mesh] = np.array([[decode_example(src[i])[k][0] for k in ("ref_chosen_logp", "ref_rejected_logp")]
                                for i in range(len(src))])
    np.testing.assert_allclose(logps[2, 2, 2], logps[1, 1, 1], rtol=1e-5)


def test_greedy_decoding_matches_on_every_mesh(tiny_model_dir):
    rng = np.random.RandomState(0)
    lengths = [9, 5, 12, 7, 3, 10, 8, 6]
    ids = np.zeros((8, 12), np.int32)
    mask = np.zeros((8, 12), np.int32)
    for i, n in enumerate(lengths):
        ids[i, 12 - n:] = rng.randint(8, 500, n)
        mask[i, 12 - n:] = 1
    model = ttpa_jax.load_pretrained(tiny_model_dir)
    expected = np.asarray(generate(model, ids, mask, max_new_tokens=10, eos_ids=()).tokens)
    for shape in MESHES:
        mesh = make_mesh(*shape)
        graphdef, state = nnx.split(ttpa_jax.load_pretrained(tiny_model_dir))
        sharded = nnx.merge(graphdef, place_state(state, mesh))
        with jax.set_mesh(mesh):
            got = np.asarray(generate(sharded, ids, mask, max_new_tokens=10, eos_ids=()).tokens)
        np.testing.assert_array_equal(got, expected, err_msg=str(shape))


def test_checkpoint_restores_on_another_mesh(tiny_model_dir, tmp_path, single_device_run):
    data, _, once = single_device_run
    run = tmp_path / "run"
    train(dpo_config(tiny_model_dir, data, run, (1, 8, 1), steps=4, stop_after=2), progress=False)
    train(dpo_config(tiny_model_dir, data, run, (2, 2, 2), steps=4), progress=False)
    b = metrics(run)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    # Reductions run in another order on each mesh: equal to float32 rounding, which grows a little
    # with each update (1e-5 relative for the step itself, 1e-4 after updates on other meshes).
    for x, y in zip(once, b):
        for k in ("loss", "grad_norm", "rewards/margins"):
            assert abs(x[k] - y[k]) < 1e-4 * max(1.0, abs(x[k])), (x["step"], k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tiny_model_dir, tmp_path, single_device_run):
    data, _, _ = single_device_run
    common = [sys.executable, "-m", "ttpa_jax.train", "dpo", "--model", str(tiny_model_dir), "--data", str(data),
              "--steps", "2", "--dataset.batch-size", "8", "--lora.rank", "8", "--lora.alpha", "16",
              "--optim.lr", "1e-2", "--optim.warmup-steps", "0"]
    env1 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    subprocess.run([*common, "--out", str(tmp_path / "one")], env=env1, check=True, capture_output=True)

    env2 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    addr = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([*common, "--out", str(tmp_path / "two"), "--dist.coordinator", addr,
                               "--dist.num-processes", "2", "--dist.process-id", str(i)],
                              env=env2, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2]  # process 0 alone writes the log
    for a, b in zip(one, two):
        for k in ("loss", "grad_norm", "rewards/margins"):
            assert abs(a[k] - b[k]) < 1e-5 * max(1.0, abs(a[k])), (a["step"], k)
