"""Minimum-cost assignment (the Hungarian method), and the name-first matching of parallel calls.

Pure Python, O(n^3), no SciPy. For a square cost matrix ``cost[i][j]`` it returns ``perm`` with
``perm[i] = j`` minimising ``sum(cost[i][perm[i]])``. Callers pad rectangular problems to square
with the cost of leaving a row or column unmatched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def min_cost_assignment(cost: list[list[float]]) -> list[int]:
    """Row ``i`` is assigned column ``result[i]``; the total cost is minimal. Ties: deterministic."""
    n = len(cost)
    if n == 0:
        return []
    if any(len(row) != n for row in cost):
        raise ValueError("cost matrix must be square")
    # Potentials u (rows) and v (columns); p[j] = row matched to column j (1-based, 0 = none).
    u = [0.0] * (n + 1)
    v = [0.0] * (n + 1)
    p = [0] * (n + 1)
    way = [0] * (n + 1)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = [math.inf] * (n + 1)
        used = [False] * (n + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = p[j0], math.inf, 0
            for j in range(1, n + 1):
                if used[j]:
                    continue
                cur = cost[i0 - 1][j - 1] - u[i0] - v[j]
                if cur < minv[j]:
                    minv[j], way[j] = cur, j0
                if minv[j] < delta:
                    delta, j1 = minv[j], j
            for j in range(n + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    result = [0] * n
    for j in range(1, n + 1):
        result[p[j] - 1] = j - 1
    return result


def match_name_first(
    pred_names: Sequence[str],
    gold_names: Sequence[str],
    cost: Callable[[int | None, int | None], float],
) -> list[tuple[int | None, int | None]]:
    """Match predicted calls to gold calls: same-name pairs first, then least total cost.

    Among all matchings, the ones with the most pairs of equal names win; among those, the least
    ``sum(cost(i, j))``. ``cost(i, j)`` is the error of predicted call ``i`` against gold call
    ``j``; ``cost(i, None)`` of an extra predicted call, ``cost(None, j)`` of a missing gold call
    (all >= 0). A right tool with wrong arguments is thus never traded for a crosswise match that
    happens to cost less (two wrong tools). Returns ``(i, j)`` pairs, ``None`` marking a side left
    unmatched; every predicted and every gold index appears exactly once.
    """
    n_pred, n_gold = len(pred_names), len(gold_names)
    n = max(n_pred, n_gold)
    base = [[0.0] * n for _ in range(n)]
    same = [[False] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            pi = i if i < n_pred else None
            gj = j if j < n_gold else None
            if pi is not None or gj is not None:
                base[i][j] = float(cost(pi, gj))
            same[i][j] = pi is not None and gj is not None and pred_names[pi] == gold_names[gj]
    # A name mismatch costs more than any whole matching can: the count of same-name pairs is
    # maximised first, the cost only breaks ties between those matchings.
    big = 1.0 + sum(max(row, default=0.0) for row in base)
    full = [[base[i][j] + (0.0 if same[i][j] else big) for j in range(n)] for i in range(n)]
    out = []
    for i, j in enumerate(min_cost_assignment(full)):
        if i < n_pred or j < n_gold:
            out.append((i if i < n_pred else None, j if j < n_gold else None))
    return out
