"""The RL stage: GRPO and PPO losses against NumPy, a learnable reward that rises, multi-turn rollouts
with tools that run, exact resume, and sharded against single-device runs."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import metrics, sft_records, write_jsonl

from ttpa_jax.decode.loop import DecodeResult
from ttpa_jax.decode.rules import Sampling
from ttpa_jax.model.settings import LoraConfig
from ttpa_jax.model.transformer import Ctx, Visibility, init_model, positions_from_mask
from ttpa_jax.sample.sampler import Prompt
from ttpa_jax.text.prompts import encode_chat, load_tokenizer
from ttpa_jax.tools.rewards import parse_reward_spec
from ttpa_jax.train.batches import GroupEpisodes, ValuedEpisodes
from ttpa_jax.train.config import DataConfig, MeshConfig, OptimConfig
from ttpa_jax.train.loop import train
from ttpa_jax.train.methods import method_config
from ttpa_jax.train.rl.config import RlArgs, RlConfig
from ttpa_jax.train.rl.grpo import make_grpo
from ttpa_jax.train.rl.policy import ValueHead
from ttpa_jax.train.rl.ppo import make_ppo
from ttpa_jax.train.rl.rewards import Episode, EpisodeReward
from ttpa_jax.train.rl.rollout import rollout, toolbox_executor


# ------------------------------------------------------------------ fixed rollouts and NumPy references
def _batch(seed=0, B=4, T=16, V=512):
    """Right-padded rows: prompt (no loss) | turn (loss) | tool result (no loss) | turn (loss) | pad."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, V, (B, T)).astype(np.int32)
    attn = np.zeros((B, T), np.int32)
    loss = np.zeros((B, T), np.float32)
    for b in range(B):
        n = T - b  # row b has b padding columns
        attn[b, :n] = 1
        loss[b, 3:7] = 1
        loss[b, 10:n] = 1
    return ids, attn, loss


def _np_logp_entropy(logits, ids):
    """out[:, t] scores ids[:, t] with logits[:, t - 1]; column 0 is 0."""
    logits = logits.astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    B, T = ids.shape
    logp, ent = np.zeros((B, T)), np.zeros((B, T))
    for t in range(1, T):
        lp = logits[:, t - 1] - lse[:, t - 1, None]
        logp[:, t] = lp[np.arange(B), ids[:, t]]
        ent[:, t] = -(np.exp(lp) * lp).sum(-1)
    return logp, ent


def _np_grpo(logp, old, ref, rewards, G, mask, eps_low, eps_high, beta, scale):
    r = rewards.reshape(-1, G).astype(np.float64)
    adv = r - r.mean(1, keepdims=True)
    if scale:
        adv = adv / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    adv = adv.reshape(-1)
    total = kl_sum = clipped = 0.0
    for b in range(len(adv)):
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            ratio = math.exp(logp[b, t] - old[b, t])
            pg = -min(ratio * adv[b], min(max(ratio, 1 - eps_low), 1 + eps_high) * adv[b])
            d = ref[b, t] - logp[b, t]
            kl = math.exp(d) - d - 1
            total += pg + beta * kl
            kl_sum += kl
            clipped += (ratio < 1 - eps_low and adv[b] < 0) or (ratio > 1 + eps_high and adv[b] > 0)
    n = mask.sum()
    return total / n, kl_sum / n, clipped / n


def _np_gae(rewards, values, mask, gamma, lam):
    adv = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        cols = [t for t in range(rewards.shape[1]) if mask[b, t]]
        nxt_v = nxt_a = 0.0
        for t in reversed(cols):
            delta = rewards[b, t] + gamma * nxt_v - values[b, t]
            nxt_a = delta + gamma * lam * nxt_a
            nxt_v = values[b, t]
            adv[b, t] = nxt_a
    return adv, (adv + values) * mask


def _np_ppo(logp, old, ref, values, old_values, scores, mask, kl_ctl, clip_r, c, cv, gamma, lam, vf_coef):
    rewards = -kl_ctl * (old - ref) * mask
    for b in range(len(scores)):
        last = max(t for t in range(mask.shape[1]) if mask[b, t])
        rewards[b, last] += min(max(scores[b], -clip_r), clip_r)
    adv, ret = _np_gae(rewards, old_values, mask, gamma, lam)
    ratio = np.exp((logp - old) * mask)
    pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - c, 1 + c))
    vc = np.clip(values, old_values - cv, old_values + cv)
    vf = 0.5 * np.maximum((values - ret) ** 2, (vc - ret) ** 2)
    n = mask.sum()
    return (pg * mask).sum() / n + vf_coef * (vf * mask).sum() / n, adv, ret


@pytest.fixture(scope="module")
def two_models():
    return init_model("tiny-qwen2", seed=0), init_model("tiny-qwen2", seed=1)


@pytest.mark.parametrize("scale, temperature, chunk", [(True, 1.0, 0), (False, 0.7, 5)])
def test_grpo_loss_matches_numpy(two_models, scale, temperature, chunk):
    policy, reference = two_models
    ids, attn, mask = _batch()
    G = 2
    rewards = np.array([1.0, 0.0, 0.5, 0.5], np.float32)  # the second group has zero variance
    algo = make_grpo(kl_coef=0.3, epsilon_low=0.2, epsilon_high=0.28, scale_rewards=scale, temperature=temperature,
                     logits_chunk=chunk)
    host, extra = algo.host_inputs(rewards, G)
    assert extra["zero_std_groups"] == 1 and np.all(host["advantages"][2:] == 0)
    batch = GroupEpisodes(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(attn), loss_mask=jnp.asarray(mask),
                          advantages=jnp.asarray(host["advantages"]))
    prepared = algo.prepare(policy, reference, None, batch)
    logits = np.asarray(policy(jnp.asarray(ids), jnp.asarray(attn))) / temperature  # the sampling distribution
    logp, ent = _np_logp_entropy(logits, ids)
    ref, _ = _np_logp_entropy(np.asarray(reference(jnp.asarray(ids), jnp.asarray(attn))) / temperature, ids)
    np.testing.assert_allclose(np.asarray(prepared["old_logp"]) * mask, logp * mask, atol=1e-5)
    np.testing.assert_allclose(np.asarray(prepared["ref_logp"]) * mask, ref * mask, atol=1e-5)
    # the policy moved since sampling: ratios away from 1, some of them clipped
    old = logp + np.random.RandomState(1).uniform(-0.4, 0.4, logp.shape)
    batch = batch.replace(old_logp=jnp.asarray(old, jnp.float32), ref_logp=jnp.asarray(ref, jnp.float32))
    loss, sums = algo.loss(policy, None, batch, Ctx())
    m = algo.finalize(sums)
    want, kl, clip = _np_grpo(logp, old, ref, rewards, G, mask, 0.2, 0.28, 0.3, scale)
    assert clip > 0
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(m["kl"]), kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(m["clip_fraction"]), clip, atol=1e-6)
    np.testing.assert_allclose(float(m["entropy"]), (ent * mask).sum() / mask.sum(), rtol=1e-5)


def test_ppo_loss_matches_numpy(two_models):
    policy, reference = two_models
    ids, attn, mask = _batch(seed=2)
    head = ValueHead(policy.config.hidden_size)
    rng = np.random.RandomState(3)
    head.proj.kernel[...] = jnp.asarray(rng.normal(0, 0.5, head.proj.kernel.shape), jnp.float32)
    head.proj.bias[...] = jnp.asarray([0.1], jnp.float32)
    kw = dict(kl_ctl=0.4, clip_reward_value=5.0, cliprange=0.2, cliprange_value=0.2, gamma=1.0, lam=0.95, vf_coef=0.1)
    algo = make_ppo(**kw)
    scores = np.array([1.0, -2.0, 7.0, -0.25], np.float32)  # 7 is clipped to 5
    batch = ValuedEpisodes(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(attn), loss_mask=jnp.asarray(mask),
                           **{k: jnp.asarray(v) for k, v in algo.host_inputs(scores, 1)[0].items()})
    prepared = algo.prepare(policy, reference, head, batch)
    h, _ = policy.hidden_states(jnp.asarray(ids), Visibility(positions_from_mask(jnp.asarray(attn)), jnp.asarray(attn)))
    v_all = np.asarray(h, np.float64) @ np.asarray(head.proj.kernel[...], np.float64) + 0.1  # [B, T, 1]
    values = np.pad(v_all[:, :-1, 0], ((0, 0), (1, 0))) * mask
    logp, _ = _np_logp_entropy(np.asarray(policy(jnp.asarray(ids), jnp.asarray(attn))), ids)
    ref, _ = _np_logp_entropy(np.asarray(reference(jnp.asarray(ids), jnp.asarray(attn))), ids)
    np.testing.assert_allclose(np.asarray(prepared["old_values"]), values, atol=1e-5)
    # GAE on the rollout (the sampling policy is the current one)
    _, adv, ret = _np_ppo(logp, logp, ref, values, values, scores, mask, 0.4, 5.0, 0.2, 0.2, 1.0, 0.95, 0.1)
    np.testing.assert_allclose(np.asarray(prepared["advantages"]), adv, atol=1e-4)
    np.testing.assert_allclose(np.asarray(prepared["returns"]), ret, atol=1e-4)
    # an update after the policy and the values moved: ratio and value clipping both bite
    noise = np.random.RandomState(4)
    old = logp + noise.uniform(-0.4, 0.4, logp.shape)
    old_values = values + noise.uniform(-0.5, 0.5, values.shape) * mask
    want, adv, ret = _np_ppo(logp, old, ref, values, old_values, scores, mask, 0.4, 5.0, 0.2, 0.2, 1.0, 0.95, 0.1)
    batch = batch.replace(old_logp=jnp.asarray(old, jnp.float32), ref_logp=jnp.asarray(ref, jnp.float32),
                          old_values=jnp.asarray(old_values, jnp.float32), advantages=jnp.asarray(adv, jnp.float32),
                          returns=jnp.asarray(ret, jnp.float32))
    loss, sums = algo.loss(policy, head, batch, Ctx())
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(algo.finalize(sums)["loss"]), want, rtol=1e-5, atol=1e-5)
    assert float(algo.finalize(sums)["clip_fraction"]) > 0


def test_reward_spec_and_terms():
    spec = parse_reward_spec("0.5*esm+0.5*tl+0.2*format")
    assert spec.terms == ((0.5, "esm"), (0.5, "tl"), (0.2, "format"))
    assert parse_reward_spec("esm+format").terms == ((1.0, "esm"), (1.0, "format"))
    for bad in ("", "esm+", "2*bleu", "esm*0.5"):
        with pytest.raises(ValueError, match="--reward"):
            parse_reward_spec(bad)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    gold = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    good = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    ep = Episode(good, gold, tools, ('{"temp": 21, "sky": "clear"}', '{"error": "x"}'), "It is 21 degrees.")
    total, parts = EpisodeReward.parse("0.5*esm+0.5*tl+0.2*format+answer")(ep)
    assert parts == {"esm": 1.0, "tl": 1.0, "format": 1.0, "answer": 0.5}  # 21 mentioned, "clear" not
    assert total == pytest.approx(0.5 + 0.5 + 0.2 + 0.5)
    bad = Episode("no call here", gold, tools)
    _, parts = EpisodeReward.parse("esm+tl+format+answer")(bad)
    assert parts == {"esm": 0.0, "tl": -2.0, "format": 0.0, "answer": 0.0}


# ------------------------------------------------------------------ multi-turn rollouts with the toolbox
def _scripted(tokenizer, turns):
    """A decoder stand-in that answers turn k with the text ``turns[k]`` (then EOS) on every row."""
    calls = []

    def decode(model, ids, mask, *, max_new_tokens, eos_ids, **kw):
        k = len(calls)
        calls.append(np.asarray(ids))
        toks = tokenizer(turns[k], add_special_tokens=False)["input_ids"] + [eos_ids[0]]
        B = ids.shape[0]
        out = np.zeros((B, max_new_tokens), np.int32)
        out[:, :len(toks)] = toks
        z = np.zeros((B, max_new_tokens, 2))
        return DecodeResult(out, np.full(B, len(toks), np.int32), z, z.astype(np.int32))

    return decode, calls


def test_multi_turn_rollout_runs_the_toolbox_and_masks_tool_tokens(tiny_model_dir):
    from ttpa_jax.tools.library import bundled_tools

    tok = load_tokenizer(tiny_model_dir)
    tool = next(t for t in bundled_tools() if t.name == "convert_temperature").schema
    args = {"value": 100, "from_scale": "celsius", "to_scale": "fahrenheit"}
    msgs = [{"role": "user", "content": "100 C in F?"}]
    prompt = Prompt("r0", 1, msgs, [tool], [{"name": "convert_temperature", "arguments": args}],
                    encode_chat(tok, msgs, [tool]))
    call = f'<tool_call>\n{{"name": "convert_temperature", "arguments": {json.dumps(args)}}}\n</tool_call>'
    unknown = '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>'
    decode, seen = _scripted(tok, [call + "\n" + unknown, "It is 212 degrees fahrenheit."])
    ro = rollout(None, tok, [prompt], group_size=2, sampling=Sampling(1.0), key=jax.random.key(0),
                 max_new_tokens=160, max_turns=3, max_length=2048, eos_ids=(1,), pad_id=0, decode=decode)
    assert len(seen) == 2 and ro.turns.tolist() == [2, 2]
    ep = ro.episodes[0]
    assert json.loads(ep.tool_results[0]) == {"result": 212, "scale": "fahrenheit"}  # the toolbox ran it
    assert "unknown tool 'launch_rocket'" in json.loads(ep.tool_results[1])["error"]  # refused
    assert ro.calls_executed == 2 and ro.calls_refused == 2
    assert ep.final_answer == "It is 212 degrees fahrenheit." and ep.completion.startswith("<tool_call>")
    _, parts = EpisodeReward.parse("esm+answer")(ep)
    assert parts["answer"] == 1.0  # 212 and "fahrenheit" are mentioned; the error result does not count
    row, mask = ro.input_ids[0], ro.loss_mask[0]
    n = int(ro.attention_mask[0].sum())
    P = len(prompt.ids)
    assert mask[:P].sum() == 0 and row[:P].tolist() == prompt.ids
    gen = np.flatnonzero(mask[:n])
    first_end = P + len(tok(call + "\n" + unknown, add_special_tokens=False)["input_ids"]) + 1
    assert gen[0] == P and mask[P:first_end].all()
    env = row[first_end:gen[gen > first_end][0]]  # the tool-result tokens, no loss
    env_text = tok.decode(env.tolist())
    assert "<tool_response>" in env_text and '"result": 212' in env_text and env_text.endswith("assistant\n")
    # the second turn's context is exactly the sequence so far: what the model saw is what trains
    assert seen[1][0, -first_end - len(env):].tolist() == row[:first_end + len(env)].tolist()


def test_toolbox_executor_refuses_what_it_cannot_run():
    from helpers import TOOLS

    assert "error" in toolbox_executor("get_weather", {"city": "Oslo"}, TOOLS)  # no bundled executor
    assert "unknown tool" in toolbox_executor("nope", {}, TOOLS)["error"]


# ------------------------------------------------------------------ training runs
def rl_config(model_dir, data, out, objective="grpo", mesh=MeshConfig(data=1, fsdp=1, tensor=1), steps=3,
              **rl) -> RlArgs:
    settings = {**dict(group_size=4, prompts_per_step=2, max_new_tokens=8, max_turns=1, temperature=1.0), **rl}
    return method_config(objective, model=str(model_dir), data=str(data), out=str(out), mesh=mesh,
                         lora=LoraConfig(rank=8, alpha=16), dataset=DataConfig(max_length=512, pad_multiple=16),
                         optim=OptimConfig(lr=2e-2, warmup_steps=0), steps=steps, save_every=100,
                         rl=RlConfig(**settings))


def even_tokens(ep: Episode):
    """A learnable toy reward: the share of generated tokens with an even id."""
    frac = float(np.mean([t % 2 == 0 for t in ep.completion_ids])) if ep.completion_ids else 0.0
    return frac, {"even": frac}


STABLE = ("loss", "kl", "reward", "reward_std", "entropy", "clip_fraction", "completion_length", "zero_std_groups")


@pytest.fixture(scope="module")
def rl_model_dir(tmp_path_factory):
    """A tiny Llama whose tokenizer was trained on the rendered conversations (merges across words):
    the prompts with their tool block are ~70 tokens, so a CPU step takes a fraction of a second."""
    from ttpa_jax.model.config import presets_dir
    from ttpa_jax.model.tiny import build_model_dir, render_chat

    d = tmp_path_factory.mktemp("rl-model")
    cfg = json.loads((presets_dir() / "tiny-llama3.json").read_text())
    cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=1024)
    (d / "preset.json").write_text(json.dumps(cfg))
    texts = [render_chat(r["messages"], r["tools"]) for r in sft_records(60)]
    return build_model_dir(d / "model", texts, preset=str(d / "preset.json"), seed=0, split_words=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("rl") / "train.jsonl", sft_records(8))


@pytest.fixture(scope="module")
def reference_run(rl_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "whole"
    train(rl_config(rl_model_dir, data, out, num_iterations=2), progress=False, reward_fn=even_tokens)
    return metrics(out)


def _favourite_token(model_dir, data) -> int:
    """The token the untrained model emits most often when decoding the data's prompts greedily."""
    import ttpa_jax
    from ttpa_jax.decode.loop import generate
    from ttpa_jax.sample.sampler import read_prompts
    from ttpa_jax.text.prompts import left_pad

    tok = load_tokenizer(model_dir)
    _, prompts = read_prompts(Path(data), tok, 8, 4096)
    ids, mask = left_pad([p.ids for p in prompts], 0)
    res = generate(ttpa_jax.load_pretrained(model_dir), ids, mask, max_new_tokens=8, eos_ids=(1,))
    values, counts = np.unique(res.tokens, return_counts=True)
    return int(values[np.argmax(counts)])


def test_learnable_reward_rises_with_bounded_kl(rl_model_dir, data, tmp_path):
    """A reward for emitting one particular token (the one the model already likes most, so groups
    differ from the start): the share of generated tokens that are it rises from ~0.1 to near 1 in
    a few steps of full fine-tuning, while the KL to the reference stays bounded."""
    import dataclasses

    target = _favourite_token(rl_model_dir, data)

    def reward(ep: Episode):
        share = float(np.mean([t == target for t in ep.completion_ids])) if ep.completion_ids else 0.0
        return share, {"target": share}

    out = tmp_path / "run"
    cfg = rl_config(rl_model_dir, data, out, steps=15, group_size=8, temperature=0.15, kl_coef=0.04)
    cfg = dataclasses.replace(cfg, lora=LoraConfig(rank=0), optim=OptimConfig(lr=3e-3, warmup_steps=0))
    train(cfg, progress=False, reward_fn=reward)
    rows = metrics(out)
    r = [m["reward"] for m in rows]
    assert len(rows) == 15
    assert np.mean(r[:2]) < 0.3 and np.mean(r[-5:]) > 0.8, r
    assert all(m["kl"] < 1.0 for m in rows[-5:]), [m["kl"] for m in rows]
    assert all(k in rows[-1] for k in ("rewards/target/mean", "rewards/target/std", "clip_fraction", "entropy",
                                       "completion_length", "zero_std_groups", "grad_norm", "learning_rate"))


def test_killed_grpo_run_resumes_to_the_same_metrics(rl_model_dir, data, tmp_path, reference_run):
    cfg = rl_config(rl_model_dir, data, tmp_path / "run", num_iterations=2)
    import dataclasses

    train(dataclasses.replace(cfg, stop_after=2), progress=False, reward_fn=even_tokens)
    assert len(metrics(tmp_path / "run")) == 2
    train(cfg, progress=False, reward_fn=even_tokens)
    resumed = metrics(tmp_path / "run")
    assert [m["step"] for m in resumed] == [1, 2, 3]
    for a, b in zip(reference_run, resumed):
        for k in STABLE:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)


def test_sharded_run_equals_single_device(rl_model_dir, data, tmp_path, reference_run):
    assert len(jax.devices()) == 8
    train(rl_config(rl_model_dir, data, tmp_path / "run", num_iterations=2,
                       mesh=MeshConfig(data=2, fsdp=4, tensor=1)), progress=False, reward_fn=even_tokens)
    sharded = metrics(tmp_path / "run")
    for a, b in zip(reference_run, sharded):
        for k in STABLE:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (a["step"], k)


def test_ppo_runs_with_the_tl_reward_and_a_value_head(rl_model_dir, data, tmp_path):
    import dataclasses

    out = tmp_path / "ppo"
    cfg = rl_config(rl_model_dir, data, out, objective="ppo", steps=2, kl_coef=0.4, group_size=1,
                    prompts_per_step=8, max_turns=2, reward="tl")
    train(dataclasses.replace(cfg, stop_after=1), progress=False)
    summary = train(cfg, progress=False)  # resumes: the value head comes back with the optimizer state
    assert [r["step"] for r in metrics(out)] == [1, 2]
    m = summary["metrics"]
    assert m["rewards/tl/mean"] == pytest.approx(-2.0)  # an untrained model makes no parsable call
    assert all(math.isfinite(m[k]) for k in ("loss", "value_loss", "returns", "advantages", "kl"))
    assert m["value_loss"] > 0
