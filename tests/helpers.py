"""Tiny random Hugging Face checkpoints made with transformers, for comparing against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

LLAMA3_SCALING = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def tiny_hf_model(family: str, *, tie: bool = False, seed: int = 0, **overrides):
    """A small random transformers model (eval mode, fp32)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=tie,
                  max_position_embeddings=256, eos_token_id=1, pad_token_id=0, bos_token_id=None)
    common.update(overrides)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "llama":
        common.setdefault("rope_scaling", dict(LLAMA3_SCALING))
        common.setdefault("rope_theta", 500000.0)
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ValueError(family)
    # Random non-zero biases and norm weights, so a dropped bias or norm shows up in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def left_padded_batch(vocab: int, lengths: list[int], seed: int = 0):
    """input_ids, attention_mask [B, T] with rows left-padded (pad id 0) to the longest length."""
    rng = np.random.RandomState(seed)
    T = max(lengths)
    ids = np.zeros((len(lengths), T), np.int64)
    mask = np.zeros((len(lengths), T), np.int64)
    for i, n in enumerate(lengths):
        ids[i, T - n:] = rng.randint(2, vocab, n)
        mask[i, T - n:] = 1
    return ids, mask


def torch_logits(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()


# ------------------------------------------------------------------ tool-use data for training tests
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]
CITIES = ["Paris", "Lyon", "Rome", "Oslo", "Lima", "Kyiv", "Doha", "Baku", "Nice", "Bern"]


def _call(name, city):
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": {"city": city}}}]}


def sft_records(n: int, seed: int = 0) -> list[dict]:
    """Short tool-use conversations: query -> call -> result -> answer."""
    import json
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        city, tool = rng.choice(CITIES), rng.choice(["get_weather", "get_time"])
        q = f"What is the {'weather' if tool == 'get_weather' else 'time'} in {city}?"
        out.append({"id": f"r{i}", "tools": TOOLS, "messages": [
            {"role": "user", "content": q}, _call(tool, city),
            {"role": "tool", "name": tool, "content": json.dumps({"value": i})},
            {"role": "assistant", "content": f"It is {i}."}]})
    return out


def preference_records(n: int, seed: int = 0, tools=("get_weather", "get_time")) -> list[dict]:
    """Pairs whose chosen calls the right tool and rejected the other one."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        city, tool = rng.choice(CITIES), rng.choice(list(tools))
        other = "get_time" if tool == "get_weather" else "get_weather"
        q = f"What is the {'weather' if tool == 'get_weather' else 'time'} in {city}?"
        out.append({"prompt": [{"role": "user", "content": q}], "chosen": [_call(tool, city)],
                    "rejected": [_call(other, city)], "tools": TOOLS})
    return out


def write_jsonl(path, records) -> str:
    import json

    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def metrics(run_dir) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
