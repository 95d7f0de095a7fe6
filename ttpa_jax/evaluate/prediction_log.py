"""Predictions written as they are made, so that a killed ``evaluate`` continues where it stopped.

With ``--out metrics.json``, every prediction decoded (``--model``) or received (``--endpoint``) is
appended to ``metrics.predictions.jsonl`` next to it, one fsynced ``{"id", "turn", "prediction",
"meta"}`` line each (``core.record_log``; ``meta``: the run's settings), batch by batch. The same
command run again reads them, cuts a torn last line, decodes only the turns still missing (in the
batches an uninterrupted run would have made) and scores them all: the metrics equal an uninterrupted
run's. A log written with other settings is refused. The file is also a ``--predictions`` file.
Without ``--out`` nothing is written and nothing resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ttpa_jax.core.record_log import RecordLog, refuse_other_settings

Key = tuple[str, int]
ENDPOINT_CHUNK = 8  # requests in flight per chunk is --batch-size; a chunk is this many times that


def prediction_log_path(out: Path) -> Path:
    """``metrics.json`` -> ``metrics.predictions.jsonl`` (next to the metrics)."""
    out = Path(out)
    return out.with_name((out.name[: -len(".json")] if out.name.endswith(".json") else out.name) + ".predictions.jsonl")


class PredictionLog:
    """The predictions of a run so far (``out`` None: kept in memory only)."""

    def __init__(self, out: Path | None, settings: dict[str, Any]):
        self.settings, self.memory = settings, {}
        self.log = None if out is None else RecordLog(prediction_log_path(out), key=("id", "turn"), whole=True)
        if self.log is not None and self.log.records:
            first = next(iter(self.log.records.values()))
            refuse_other_settings(self.log.path, first.get("meta") or {}, settings)

    def __contains__(self, key: Key) -> bool:
        return key in (self.memory if self.log is None else self.log.records)

    def __getitem__(self, key: Key) -> Any:
        return self.memory[key] if self.log is None else self.log.records[key]["prediction"]

    def add(self, key: Key, prediction: Any) -> None:
        if self.log is None:
            self.memory[key] = prediction
        else:
            self.log.append({"id": key[0], "turn": key[1], "prediction": prediction, "meta": self.settings})

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decoded(log: PredictionLog, keys: Sequence[Key], prompts: list[dict], model_dir: str, max_new_tokens: int,
            batch_size: int, progress: bool) -> dict[Key, str]:
    """Our decoder's texts for ``{"messages", "tools"}`` prompts, those not in ``log`` decoded and
    logged batch by batch; returns every key's."""
    if any(k not in log for k in keys):
        from tqdm.auto import tqdm

        from ttpa_jax.decode.generate import iter_completions  # JAX is loaded only for this mode

        have = [k in log for k in keys]
        # loads the model and encodes every prompt: a bad model or prompt fails before the progress bar
        completions = iter_completions(model_dir, prompts, max_new_tokens, batch_size, skip=have.__getitem__)
        with tqdm(total=len(keys), initial=sum(have), desc="evaluate", unit="prompt", disable=not progress) as bar:
            for idx, texts in completions:
                for i, text in zip(idx, texts or []):
                    if keys[i] not in log:
                        log.add(keys[i], text)
                        bar.update(1)
    return {k: log[k] for k in keys}


def received(log: PredictionLog, keys: Sequence[Key], prompts: Sequence[tuple[list[dict], list[dict]]], url: str,
             model: str | None, max_tokens: int, concurrency: int, progress: bool) -> dict[Key, Any]:
    """An endpoint's predictions (``evaluate.endpoint``) for the prompts not in ``log``, asked and
    logged a chunk of ``ENDPOINT_CHUNK * concurrency`` requests at a time; returns every key's."""
    todo = [i for i, k in enumerate(keys) if k not in log]
    if todo:
        from ttpa_jax.evaluate.endpoint import endpoint_predictions  # the openai client, only for this mode

        step = ENDPOINT_CHUNK * max(1, concurrency)
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            got = endpoint_predictions([prompts[i] for i in chunk], url, model, max_tokens, concurrency, progress)
            for i, p in zip(chunk, got, strict=True):
                log.add(keys[i], p)
    return {k: log[k] for k in keys}
