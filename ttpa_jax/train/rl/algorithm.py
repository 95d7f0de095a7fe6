"""What an RL unit needs from its algorithm (GRPO, PPO; ``session.RlUnit``): four small functions.

- ``host_inputs(rewards [R], group_size) -> (arrays, metrics)``: per-row inputs computed on the host
  from the episode rewards (GRPO's group advantages, PPO's scores);
- ``prepare(policy, reference, value_head, batch) -> arrays``: one pass without gradients over the
  rollouts (the sampling policy's log-probs, the reference's, values and GAE for PPO);
- ``loss(policy, value_head, batch, ctx) -> (loss, sums)``: the update's loss and additive sums;
- ``finalize(sums) -> metrics``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    host_inputs: Callable
    prepare: Callable
    loss: Callable
    finalize: Callable
    value_head: bool = False
