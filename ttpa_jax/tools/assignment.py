"""Minimum-cost assignment (the Hungarian method), used to match parallel calls order-free.

Pure Python, O(n^3), no SciPy. For a square cost matrix ``cost[i][j]`` it returns ``perm`` with
``perm[i] = j`` minimising ``sum(cost[i][perm[i]])``. Callers pad rectangular problems to square
with the cost of leaving a row or column unmatched.
"""

from __future__ import annotations

import math


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
