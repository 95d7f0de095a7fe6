"""Memory planning: per-device figures from the abstract model, checked against XLA's memory analysis
of the real compiled train step on 8 fake CPU devices."""

import json
import subprocess
from pathlib import Path

import pytest
from compiled_step import compiled_memory

from ttpa_jax.model.config import load_config
from ttpa_jax.model.lora import LoraConfig
from ttpa_jax.plan.activations import TensorSplit, activation_bytes, layer_bytes_per_token
from ttpa_jax.plan.memory import main, plan
from ttpa_jax.train.config import MeshConfig

REPO = Path(__file__).resolve().parents[2]

# Arguments (parameters, optimizer state, batch, key) are counted array by array from the same
# sharding rules the trainer uses: they must agree with XLA to within 1%. Temporaries (activations,
# gradients, all-gathered weights) are an estimate of what XLA keeps; over the runs measured for
# docs/scaling.md XLA:CPU's figure was 0.87x to 1.26x the estimate where every sharded dimension
# divides, so a factor of 1.5 either way is the tolerance.
ARGUMENT_TOLERANCE = 0.01
TEMP_FACTOR = 1.5


@pytest.mark.parametrize("preset, mesh, objective, lora_rank, batch, seq_len, chunk", [
    ("tiny-qwen2", (1, 8, 1), "sft", 8, 8, 128, 0),     # FSDP over all 8 devices, LoRA
    ("tiny-qwen2", (2, 2, 2), "dpo", 8, 4, 128, 0),     # data x fsdp x tensor, DPO with the adapters-off reference
    ("tiny-llama3", (2, 2, 2), "sft", 0, 8, 64, 0),     # full fine-tuning
    ("tiny-llama3", (1, 1, 1), "dpo", 8, 4, 256, 32),   # vocabulary-sized buffers for 32 positions at a time
    ("tiny-llama3", (1, 1, 1), "sft", 8, 2, 1024, 64),  # rows longer than an attention block: no saved scores
])
def test_plan_matches_compiled_step(preset, mesh, objective, lora_rank, batch, seq_len, chunk):
    mem = compiled_memory(preset, mesh, objective=objective, lora_rank=lora_rank, batch_size=batch, seq_len=seq_len,
                          logits_chunk=chunk)
    p = plan(preset, mesh=MeshConfig(*mesh), objective=objective, lora=LoraConfig(rank=lora_rank),
             batch_size=batch, seq_len=seq_len, dtype="float32", logits_chunk=chunk)
    d = p["per_device"]
    assert abs(mem.argument_size_in_bytes - d["arguments"]) <= ARGUMENT_TOLERANCE * d["arguments"], (
        mem.argument_size_in_bytes, d)
    ratio = mem.temp_size_in_bytes / d["transient"]
    assert ratio >= 1 / TEMP_FACTOR and ratio <= TEMP_FACTOR, (mem.temp_size_in_bytes, d)


def test_state_bytes_follow_the_rules_by_hand():
    # tiny-qwen2: D=64, F=128, N*H=64, K*H=32, V=512, 2 layers, tied embeddings. Under fsdp=8 every
    # matrix is split on its "embed" dimension; biases and norms are replicated.
    D, F, NH, KH, V, L = 64, 128, 64, 32, 512, 2
    matrices = V * D + L * (NH * D + 2 * KH * D + D * NH + 3 * D * F)
    replicated = L * (NH + 2 * KH) + L * 2 * D + D
    full = plan("tiny-qwen2", mesh=MeshConfig(1, 8, 1), lora=LoraConfig(rank=0), dtype="bfloat16")
    assert full["per_device"]["params_trainable"] == 4 * (matrices // 8 + replicated)  # fp32 when all train
    assert full["per_device"]["params_frozen"] == 0
    assert full["per_device"]["optimizer"] == 2 * full["per_device"]["params_trainable"] + 8  # mu, nu, 2 counters
    lora = plan("tiny-qwen2", mesh=MeshConfig(1, 8, 1), lora=LoraConfig(rank=8), dtype="bfloat16")
    assert lora["per_device"]["params_frozen"] == 2 * (matrices // 8 + replicated)  # base in the compute dtype
    assert lora["trainable_params"] == L * 8 * (D + NH + D + KH + D + KH + NH + D + D + F + D + F + F + D)


def test_indivisible_dimensions_are_replicated():
    one = plan("tiny-qwen2", mesh=MeshConfig(1, 1, 1), lora=LoraConfig(rank=0))["per_device"]
    three = plan("tiny-qwen2", mesh=MeshConfig(1, 1, 3), devices=3, lora=LoraConfig(rank=0))["per_device"]
    two = plan("tiny-qwen2", mesh=MeshConfig(1, 1, 2), devices=2, lora=LoraConfig(rank=0))["per_device"]
    assert three["params_trainable"] == one["params_trainable"]  # 512, 64, 32, 128 do not divide by 3
    assert two["params_trainable"] < 0.6 * one["params_trainable"]


def test_activation_formula_by_hand():
    cfg = load_config("tiny-qwen2")  # D=64, N=4, K=2, H=16, F=128
    parts = layer_bytes_per_token(cfg, seq_len=128, c=4)
    assert parts == {"attention": 4 * (2 * 64 + 2 * 64 + 2 * 32), "scores": 12 * 4 * 128,
                     "mlp": 4 * (2 * 64 + 4 * 128), "lora": 0.0}
    split = layer_bytes_per_token(cfg, 128, 4, TensorSplit(heads=2, kv_heads=2, mlp=2, vocab=2))
    assert split["scores"] == parts["scores"] / 2 and split["mlp"] == 4 * (2 * 64 + 2 * 128)
    full = activation_bytes(cfg, seqs=2, seq_len=128, c=4)
    remat = activation_bytes(cfg, seqs=2, seq_len=128, c=4, remat=True)
    assert full["logits"] == remat["logits"] == 3 * 4 * 512 * 2 * 128
    assert full["layers"] == 2 * sum(parts.values()) * 256 + 2 * 4 * 64 * 256
    assert remat["layers"] == 2 * 4 * 64 * 256 + 2 * sum(parts.values()) * 256 + 2 * 4 * 64 * 256
    assert layer_bytes_per_token(cfg, seq_len=1024, c=4)["scores"] == 0  # blocked attention keeps no scores


def test_dpo_doubles_sequences_and_full_ft_keeps_a_reference_copy():
    sft = plan("tiny-llama3", objective="sft", lora=LoraConfig(rank=0), batch_size=4, mesh=MeshConfig(1, 1, 1))
    dpo = plan("tiny-llama3", objective="dpo", lora=LoraConfig(rank=0), batch_size=4, mesh=MeshConfig(1, 1, 1))
    pre = plan("tiny-llama3", objective="dpo", lora=LoraConfig(rank=0), batch_size=4, mesh=MeshConfig(1, 1, 1),
               precompute_ref=True)
    assert dpo["sequences_per_device"] == 2 * sft["sequences_per_device"] == 8
    assert dpo["per_device"]["activations"] == 2 * sft["per_device"]["activations"]
    assert dpo["per_device"]["reference_params"] == sft["per_device"]["params_trainable"] // 2  # bf16 copy
    assert pre["per_device"]["reference_params"] == 0
    accum = plan("tiny-llama3", lora=LoraConfig(rank=0), batch_size=4, grad_accum=2, mesh=MeshConfig(1, 1, 1))
    assert accum["per_device"]["gradients"] == 2 * sft["per_device"]["gradients"]
    with pytest.raises(ValueError, match="must divide"):
        plan("tiny-llama3", batch_size=6, mesh=MeshConfig(1, 4, 1))


def test_large_preset_plans_abstractly():
    p = plan("qwen2.5-7b", mesh=MeshConfig(1, -1, 1), devices=64, lora=LoraConfig(rank=16), seq_len=4096,
             batch_size=64)
    c = load_config("qwen2.5-7b")  # untied embeddings, q/k/v biases
    D, F, NH, KH = c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    layer = D * NH + NH + 2 * (D * KH + KH) + NH * D + 3 * D * F + 2 * D
    assert p["params"] - p["trainable_params"] == 2 * c.vocab_size * D + c.num_hidden_layers * layer + D
    assert p["trainable_params"] == c.num_hidden_layers * 16 * (2 * (D + NH) + 2 * (D + KH) + 3 * (D + F))
    assert p["mesh"] == {"data": 1, "fsdp": 64, "tensor": 1}
    assert p["fits"]["16"] is False and p["per_device"]["total"] > 16 * 1024**3


def test_cli_table_json_and_help(capsys):
    assert main(["--model", "tiny-llama3", "--mesh.fsdp", "4", "--batch-size", "4",
                 "--seq-len", "64", "--objective", "dpo", "--lora.rank", "4"]) == 0
    out = capsys.readouterr().out
    assert "mesh data=1 fsdp=4 tensor=1 on 4 devices: 2 sequences of 64" in out
    assert "fits (90% usable): 16 GiB, 24 GiB, 40 GiB, 80 GiB, 141 GiB" in out
    main(["--model", str(REPO / "models/tiny-qwen2.json"), "--devices", "8", "--json"])
    p = json.loads(capsys.readouterr().out)
    assert p["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and p["per_device"]["total"] > 0
    assert main(["--model", "tiny-qwen2", "--devices", "8", "--batch-size", "4"]) == 2
    assert "error: batch_size 4 must divide by grad_accum (1) times the data-parallel devices (data * fsdp = 8)" in (
        capsys.readouterr().err)
    assert main(["--model", "no-such-model"]) == 2
    assert "no-such-model: not a model directory, a config.json, or a preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = capsys.readouterr().out
    for flag in ("--model", "--objective", "--batch-size", "--seq-len", "--dtype", "--remat", "--grad-accum",
                 "--precompute-ref", "--devices", "--memories", "--usable", "--mesh.fsdp", "--lora.rank"):
        assert flag in helptext


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm.sbatch", "local.sh"])
def test_launch_scripts_parse(script):
    path = REPO / "launch" / script
    text = path.read_text()
    assert "set -euo pipefail" in text and '"$@"' in text
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
