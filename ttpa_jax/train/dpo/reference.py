"""The DPO reference pass run once before training (``--precompute-ref``): reference log-probs of
every pair, written into a second record file that the loader then reads."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from ttpa_jax.model.distributed import sync_processes
from ttpa_jax.model.sharding import batch_sharding
from ttpa_jax.train.batches import Batch, SharedPrefixPairs
from ttpa_jax.train.dpo.config import DpoArgs
from ttpa_jax.train.example_proto import decode_example, encode_example
from ttpa_jax.train.loader import collate
from ttpa_jax.train.recordio import RecordWriter, open_source
from ttpa_jax.train.scoring import reference_logps
from ttpa_jax.train.shared_prefix import prompt_groups


def precompute_reference(st, records: Path, cfg: DpoArgs, layout: str, progress: bool = True) -> Path:
    """One pass over the preference data computing reference log-probs; writes a second record file
    with ``ref_chosen_logp``/``ref_rejected_logp`` added, reused when it already exists. ``st``: the
    ``trainer.Trainer`` (its model and placement); ``layout``: the batch layout (``loader.collate``)."""
    out = records.with_name(records.stem + "-ref" + records.suffix)
    marker = out.with_name(out.name + ".json")
    fp = json.loads((records.parent / "stats.json").read_text())["fingerprint"]
    if out.is_file() and marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fp:
        return out

    graphdef, placement, pad_id = st.graphdef, st.placement, st.pad_id

    def ref_logps(trainable, frozen, batch):
        return reference_logps(nnx.merge(graphdef, trainable, frozen), batch, cfg.logits_chunk)

    ref_logps = jax.jit(ref_logps, in_shardings=(placement.shardings(st.trainable), placement.shardings(st.frozen),
                                                 batch_sharding(placement.mesh)),
                        out_shardings=(placement.replicated, placement.replicated))

    src = open_source(records, cfg.dataset.format)
    examples = [decode_example(src[i]) for i in range(len(src))]
    per = cfg.dataset.batch_size
    order = [i for g in prompt_groups(examples) for i in g]  # a prompt's pairs in one batch where they fit
    results: list[tuple[float, float]] = [(0.0, 0.0)] * len(examples)
    bar = tqdm(total=len(examples), desc="reference log-probs", unit="pair",
               disable=not progress or jax.process_index() != 0)
    for i in range(0, len(order), per):
        idx = order[i:i + per]
        chunk = [examples[j] for j in idx]
        chunk = chunk + [chunk[-1]] * (per - len(chunk))  # fixed batch size; extra rows ignored
        host = collate(chunk, pad_id, cfg.dataset.pad_multiple, cfg.dataset.max_length, layout,
                       row_multiple=placement.batch_divisor, varying_shapes=jax.process_count() == 1,
                       row_length=cfg.dataset.row_length, lengths_per_octave=cfg.dataset.lengths_per_octave)
        n_proc, p = jax.process_count(), jax.process_index()
        local = jax.tree.map(lambda v: v[p * per // n_proc:(p + 1) * per // n_proc], host)
        with jax.set_mesh(placement.mesh):
            rc, rr = jax.device_get(ref_logps(st.trainable, st.frozen, placement.batch(local)))  # replicated: every process reads it
        for j, pair in zip(idx, by_pair(host, np.asarray(rc), np.asarray(rr))):
            results[j] = pair
        bar.update(len(idx))
    bar.close()
    if jax.process_index() == 0:
        tmp = out.with_name(out.name + ".tmp")
        with RecordWriter(tmp, cfg.dataset.format) as w:
            for ex, (rc, rr) in zip(examples, results):
                w.write(encode_example({**ex, "ref_chosen_logp": np.array([rc], np.float32),
                                        "ref_rejected_logp": np.array([rr], np.float32)}))
        tmp.replace(out)
        marker.write_text(json.dumps({"fingerprint": fp}))
    sync_processes("precompute_reference")
    return out


def by_pair(host_batch: Batch, chosen, rejected) -> list[tuple[float, float]]:
    """Per-slot values (``scoring.pair_scores`` order, [N] each) -> (chosen, rejected) per pair of
    the batch, in its order."""
    if not isinstance(host_batch, SharedPrefixPairs):
        return list(zip(chosen.tolist(), rejected.tolist()))
    slots = host_batch.sp_pair.reshape(-1)
    out = [(0.0, 0.0)] * int(slots.max() + 1)
    for s in np.flatnonzero(slots >= 0):
        out[slots[s]] = (float(chosen[s]), float(rejected[s]))
    return out
