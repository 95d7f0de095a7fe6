"""The training engine: data pipeline, SFT objective, LoRA, accumulation, checkpoints, resume, CLI."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import metrics, sft_records, write_jsonl
from transformers import AutoModelForCausalLM

import ttpa_jax
from ttpa_jax.core.jsonl import DataError
from ttpa_jax.export.weights import load_run
from ttpa_jax.model.lora import LoraConfig
from ttpa_jax.model.transformer import Ctx
from ttpa_jax.train import dataset as ds
from ttpa_jax.train.config import DataConfig, MeshConfig, OptimConfig
from ttpa_jax.train.example_proto import decode_example, encode_example
from ttpa_jax.train.loader import Loader
from ttpa_jax.train.loop import TrainingDiverged, train
from ttpa_jax.train.methods import parse_cli
from ttpa_jax.train.recordio import open_source
from ttpa_jax.train.sft.config import SftArgs
from ttpa_jax.train.sft.unit import make_sft
from ttpa_jax.train.token_weights import make_weight_fn
from ttpa_jax.train.trainer import make_train_step, split_model

ONE_DEVICE = MeshConfig(data=1, fsdp=1, tensor=1)
REPO = Path(__file__).resolve().parents[2]


def sft_config(model_dir, data, out, **kw) -> SftArgs:
    base = dict(model=str(model_dir), data=str(data), out=str(out), mesh=ONE_DEVICE,
                lora=LoraConfig(rank=4, alpha=8), dataset=DataConfig(batch_size=8, max_length=512),
                optim=OptimConfig(lr=1e-2, warmup_steps=0), save_every=100, seed=0)
    base.update(kw)
    return SftArgs(**base)



def state_arrays(model, kind=nnx.Param) -> dict:
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, kind))}


# ------------------------------------------------------------------ records and formats
def test_example_proto_round_trip():
    feats = {"ids": np.array([0, 1, 127, 128, 300000, 2**40, -5], np.int64), "w": np.array([0.5, -1, 3e7], np.float32)}
    back = decode_example(encode_example(feats))
    np.testing.assert_array_equal(back["ids"], feats["ids"])
    np.testing.assert_array_equal(back["w"], feats["w"])


def test_tfrecord_readable_by_tfrecord_package_and_formats_feed_identical_batches(tiny_model_dir, tmp_path):
    from tfrecord.reader import tfrecord_loader

    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(12))
    paths = {}
    for fmt in ("arrayrecord", "tfrecord"):
        paths[fmt], stats = ds.prepare(data, tiny_model_dir, tmp_path / fmt, kind="sft", fmt=fmt, progress=False)
        assert stats.written == 12
    ours = [decode_example(open_source(paths["tfrecord"], "tfrecord")[i]) for i in range(12)]
    theirs = list(tfrecord_loader(str(paths["tfrecord"]), None, {"input_ids": "int", "weights": "float"}))
    assert len(theirs) == 12
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        np.testing.assert_array_equal(a["weights"], b["weights"])
    loaders = {fmt: Loader(p, fmt, global_batch=4, seed=3, shuffle=True, pad_id=0, pad_multiple=64, max_length=512)
               for fmt, p in paths.items()}
    for _ in range(5):  # crosses an epoch boundary (12 records, 4 per batch)
        a, b = next(loaders["arrayrecord"]), next(loaders["tfrecord"])
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(x, y)


def test_loader_state_resumes_exactly(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(10))
    path, _ = ds.prepare(data, tiny_model_dir, tmp_path / "d", kind="sft", progress=False)
    kw = dict(global_batch=2, seed=1, shuffle=True, pad_id=0, pad_multiple=64, max_length=512)
    a = Loader(path, "arrayrecord", **kw)
    for _ in range(7):
        next(a)
    state = a.get_state()
    expected = [next(a)["input_ids"] for _ in range(4)]
    b = Loader(path, "arrayrecord", **kw)
    b.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(next(b)["input_ids"], e)


def test_process_split_is_disjoint_and_covers_global_batch(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(8))
    path, _ = ds.prepare(data, tiny_model_dir, tmp_path / "d", kind="sft", progress=False)
    kw = dict(global_batch=4, seed=0, shuffle=True, pad_id=0, pad_multiple=64, max_length=512)
    whole = next(Loader(path, "arrayrecord", **kw))["input_ids"]
    parts = [next(Loader(path, "arrayrecord", **kw, process_index=p, process_count=2))["input_ids"] for p in (0, 1)]
    rows = {tuple(r) for r in whole}
    assert {tuple(r) for r in np.concatenate(parts)} == rows
    assert not ({tuple(r) for r in parts[0]} & {tuple(r) for r in parts[1]})


# ------------------------------------------------------------------ bad input
def test_malformed_jsonl_names_file_and_line(tiny_model_dir, tmp_path):
    p = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in sft_records(3)]
    lines.insert(2, '{"messages": [oops')
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        ds.prepare(p, tiny_model_dir, tmp_path / "d", kind="sft", progress=False)


def test_unknown_role_and_tool_without_name(tiny_model_dir, tmp_path):
    recs = sft_records(3)
    recs[1]["messages"][0]["role"] = "narrator"
    p = write_jsonl(tmp_path / "role.jsonl", recs)
    with pytest.raises(DataError, match=r"role\.jsonl:2: .*role.*narrator"):
        ds.prepare(p, tiny_model_dir, tmp_path / "d1", kind="sft", progress=False)
    recs = sft_records(3)
    recs[2]["tools"] = [{"type": "function", "function": {"description": "no name", "parameters": {"type": "object"}}}]
    p = write_jsonl(tmp_path / "tool.jsonl", recs)
    with pytest.raises(DataError, match=r"tool\.jsonl:3: tools\[0\]\.function\.name"):
        ds.prepare(p, tiny_model_dir, tmp_path / "d2", kind="sft", progress=False)


def test_too_long_records_are_counted(tiny_model_dir, tmp_path):
    recs = sft_records(4)
    recs[1]["messages"][3]["content"] = "It is sunny in Paris. " * 60  # a long final answer
    p = write_jsonl(tmp_path / "long.jsonl", recs)
    _, dropped = ds.prepare(p, tiny_model_dir, tmp_path / "drop", kind="sft", max_length=450, progress=False)
    assert (dropped.written, dropped.dropped_too_long, dropped.truncated) == (3, 1, 0)
    assert "1 dropped as longer than max_length" in dropped.summary()
    path, cut = ds.prepare(p, tiny_model_dir, tmp_path / "cut", kind="sft", max_length=450, overflow="truncate", progress=False)
    assert (cut.written, cut.dropped_too_long) == (4, 0) and cut.truncated >= 1
    assert max(len(decode_example(open_source(path, "arrayrecord")[i])["input_ids"]) for i in range(4)) == 450
    recs[2]["messages"][0]["content"] = "What is the weather in Paris? " * 60  # cut before any assistant token
    p = write_jsonl(tmp_path / "long2.jsonl", recs)
    _, cut2 = ds.prepare(p, tiny_model_dir, tmp_path / "cut2", kind="sft", max_length=450, overflow="truncate", progress=False)
    assert (cut2.written, cut2.dropped_no_target) == (3, 1)
    assert "1 dropped with no loss-bearing tokens" in cut2.summary()


# ------------------------------------------------------------------ the SFT objective
SFT = make_sft()

def test_sft_loss_matches_transformers_weighted_cross_entropy(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(6))
    # PKT weights make the weights non-binary, so the weighting itself is checked too.
    path, _ = ds.prepare(data, tiny_model_dir, tmp_path / "d", kind="sft", progress=False,
                         weight_fn=make_weight_fn(pkt_wmax=3.0), weight_options={"pkt": 3})
    batch = next(Loader(path, "arrayrecord", global_batch=6, seed=0, shuffle=False, pad_id=0, pad_multiple=64, max_length=512))
    assert batch["weights"].max() > 1
    model = ttpa_jax.load_pretrained(tiny_model_dir)
    jb = jax.tree.map(jnp.asarray, batch)
    loss, sums = SFT.loss(model, None, jb, Ctx(), SFT.normalizers(jb))

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logits = hf(torch.tensor(batch["input_ids"]).long(), attention_mask=torch.tensor(batch["attention_mask"]).long()).logits
    logp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, torch.tensor(batch["input_ids"][:, 1:]).long()[..., None])[..., 0]
    w = torch.tensor(batch["weights"][:, 1:]).double()
    expected = float(-(logp * w).sum() / w.sum())
    assert abs(float(loss) - expected) < 1e-5
    assert abs(float(SFT.finalize(sums)["loss"]) - expected) < 1e-5


def test_gradient_accumulation_equals_full_batch(tiny_model_dir, tmp_path):
    import optax

    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(8))
    path, _ = ds.prepare(data, tiny_model_dir, tmp_path / "d", kind="sft", progress=False)
    batch = next(Loader(path, "arrayrecord", global_batch=8, seed=0, shuffle=True, pad_id=0, pad_multiple=64, max_length=512))
    batch = jax.tree.map(jnp.asarray, batch)
    results = []
    for accum in (1, 4):
        model = ttpa_jax.model.lora.apply_lora(ttpa_jax.load_pretrained(tiny_model_dir), LoraConfig(rank=4), seed=0)
        graphdef, trainable, frozen = split_model(model, lora=True)
        tx = optax.sgd(1.0)
        step = make_train_step(graphdef, SFT, tx, accum, lora=True)
        new, _, m = step(trainable, frozen, None, tx.init(trainable), batch, jax.random.key(0))
        results.append((jax.tree.leaves(new), {k: float(v) for k, v in m.items()}))
    (p1, m1), (p4, m4) = results
    assert abs(m1["loss"] - m4["loss"]) < 1e-5 and abs(m1["grad_norm"] - m4["grad_norm"]) < 1e-5
    for a, b in zip(p1, p4):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


# ------------------------------------------------------------------ training runs
def test_sft_lora_lowers_loss_and_trains_only_adapters(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(8))
    summary = train(sft_config(tiny_model_dir, data, tmp_path / "run", steps=12), progress=False)
    assert summary["step"] == 12
    m = metrics(tmp_path / "run")
    assert [r["step"] for r in m] == list(range(1, 13))
    losses = [r["loss"] for r in m]
    assert losses[-1] < losses[0] - 0.4 and losses == sorted(losses, reverse=True)
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "seconds"):
        assert key in m[0]
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    trained, _, _ = load_run(tmp_path / "run")
    base = state_arrays(ttpa_jax.load_pretrained(tiny_model_dir))
    after = {k: v for k, v in state_arrays(trained).items()}
    for k, v in base.items():
        np.testing.assert_array_equal(after[k], v)  # base weights bitwise unchanged
    lora_b = [v for k, v in state_arrays(trained, nnx.LoRAParam).items() if k[-1] == "lora_b"]
    assert lora_b and all(np.abs(b).max() > 0 for b in lora_b)


def test_full_finetune_changes_every_weight(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(8))
    train(sft_config(tiny_model_dir, data, tmp_path / "run", steps=2, lora=LoraConfig(rank=0),
                     optim=OptimConfig(lr=1e-3, warmup_steps=0)), progress=False)
    trained, _, _ = load_run(tmp_path / "run")
    base = state_arrays(ttpa_jax.load_pretrained(tiny_model_dir))
    after = state_arrays(trained)
    assert after.keys() == base.keys()
    assert all(not np.array_equal(after[k], base[k]) for k in base)


def _train_cmd(model_dir, data, out, *extra):
    return [sys.executable, "-m", "ttpa_jax.train", "sft", "--model", str(model_dir), "--data", str(data),
            "--out", str(out), "--steps", "6", "--save-every", "2", "--dataset.batch-size", "4",
            "--lora.rank", "4", "--lora.dropout", "0.1", "--optim.lr", "5e-3", "--optim.warmup-steps", "2",
            "--mesh.fsdp", "1", *extra]  # one device of the test process's eight


def test_resume_is_exact_across_process_exit(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(10))
    cmd = lambda out, *extra: _train_cmd(tiny_model_dir, data, out, *extra)  # noqa: E731
    assert parse_cli(cmd("x")[3:]).lora.dropout == 0.1  # dropout on: its keys must resume too
    train(parse_cli(cmd(tmp_path / "once")[3:]), progress=False)
    # First half in this process, second half in a fresh process running the same command.
    train(parse_cli(cmd(tmp_path / "twice", "--stop-after", "3")[3:]), progress=False)
    assert sorted(int(p.name) for p in (tmp_path / "twice" / "checkpoints").iterdir() if p.name.isdigit())[-1] == 3
    second = subprocess.run(cmd(tmp_path / "twice", "--stop-after", "3"), check=True, capture_output=True, text=True)
    assert "resumed from" in second.stdout
    once, twice = metrics(tmp_path / "once"), metrics(tmp_path / "twice")
    assert [r["step"] for r in twice] == list(range(1, 7))  # nothing lost, nothing duplicated
    for a, b in zip(once[3:], twice[3:]):
        for k in ("loss", "grad_norm", "learning_rate"):
            assert abs(a[k] - b[k]) < 1e-6, (a["step"], k)
    m1 = state_arrays(load_run(tmp_path / "once")[0], nnx.LoRAParam)
    m2 = state_arrays(load_run(tmp_path / "twice")[0], nnx.LoRAParam)
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], atol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(8))
    cfg = sft_config(tiny_model_dir, data, tmp_path / "run", steps=4, save_every=1,
                     lora=LoraConfig(rank=0), optim=OptimConfig(lr=1e30, warmup_steps=0, clip_norm=0))
    with pytest.raises(TrainingDiverged, match=r"training diverged; the last good checkpoint is step (\d)"):
        train(cfg, progress=False)
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    model, _, step = load_run(tmp_path / "run")
    assert step == saved[-1] and step < 4
    assert all(np.isfinite(v).all() for v in state_arrays(model).values())


# ------------------------------------------------------------------ CLI
def test_cli_help_documents_fields():
    out = subprocess.run([sys.executable, "-m", "ttpa_jax.train", "sft", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--data", "--out", "--lora.rank", "--dataset.max-length", "--optim.grad-accum", "--mae", "--pkt-wmax"):
        assert flag in out
    assert "resumes" in out and "--beta" not in out and "--loss-type" not in out


def test_yaml_config_defaults_with_cli_overrides(tmp_path):
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("steps: 5\nseed: 7\nlora:\n  rank: 16\ndataset:\n  batch_size: 4\n")
    cfg = parse_cli(["sft", "--config", str(cfg_file), "--steps", "9", "--model", "m", "--data", "d", "--out", "o"])
    assert (cfg.objective, cfg.steps, cfg.seed, cfg.lora.rank, cfg.dataset.batch_size) == ("sft", 9, 7, 16, 4)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 5\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown field 'stepz'"):
        parse_cli(["dpo", "--config", str(bad)])


def test_sharding_rules_are_a_run_setting_checked_per_array(tmp_path):
    from ttpa_jax.model.settings import ShardingRules
    from ttpa_jax.model.sharding import make_mesh, spec_for, use_rules

    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("sharding:\n  embed: tensor\n  mlp: [fsdp]\n")
    cfg = parse_cli(["sft", "--config", str(cfg_file), "--sharding.seq", "data", "--model", "m", "--data", "d", "--out", "o"])
    assert (cfg.sharding.embed, cfg.sharding.mlp, cfg.sharding.seq) == (("tensor",), ("fsdp",), ("data",))
    assert cfg.to_dict()["sharding"]["embed"] == ["tensor"]  # recorded in RUN_DIR/config.yaml
    with pytest.raises(ValueError, match="sharding.seq"):
        ShardingRules(seq=("model",))
    try:
        use_rules(cfg.sharding)  # vocab and embed both on "tensor": the embedding cannot be laid out
        with pytest.raises(ValueError, match=r"'vocab' and 'embed' .* mesh axis 'tensor'"):
            spec_for(("vocab", "embed"), (64, 32), make_mesh(1, 1, 1))
    finally:
        use_rules(ShardingRules())


def test_a_runs_written_config_reruns_it(tmp_path):
    import yaml

    written = tmp_path / "config.yaml"  # as the loop writes RUN_DIR/config.yaml: objective and the method's fields
    cfg = parse_cli(["dpo", "--model", "m", "--data", "d", "--out", "o", "--steps", "6", "--beta", "0.3"])
    written.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    again = parse_cli(["dpo", "--config", str(written), "--out", "o2"])
    assert again == dataclasses.replace(cfg, out="o2", config=str(written))
    with pytest.raises(ValueError, match=r"config\.yaml: written by a `train dpo` run, not `train sft`"):
        parse_cli(["sft", "--config", str(written)])


def test_cli_reports_bad_data_with_nonzero_exit(tiny_model_dir, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(sft_records(1)[0]) + "\nnot json\n")
    r = subprocess.run([sys.executable, "-m", "ttpa_jax.train", "sft", "--model", str(tiny_model_dir), "--data", str(p),
                        "--out", str(tmp_path / "run"), "--mesh.fsdp", "1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "bad.jsonl:2: invalid JSON" in r.stderr and "Traceback" not in r.stderr


def test_remat_step_equals_plain_step(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(8))
    for name, remat in (("plain", False), ("remat", True)):
        train(sft_config(tiny_model_dir, data, tmp_path / name, steps=2, remat=remat), progress=False)
    for a, b in zip(metrics(tmp_path / "plain"), metrics(tmp_path / "remat")):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_bundled_configs_parse(name):
    objective = "dpo" if "-dpo-" in name else "sft"  # each file names the subcommand it is for
    cfg = parse_cli([objective, "--config", str(REPO / "configs" / name), "--model", "m", "--data", "d", "--out", "o"])
    assert cfg.config.endswith(name) and cfg.dataset.max_length >= 512 and cfg.objective == objective


def test_no_arguments_prints_usage(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ttpa_jax.train"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("usage: python -m ttpa_jax.train {sft|dpo")
