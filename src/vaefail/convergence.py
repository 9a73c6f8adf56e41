"""Whether a training run converged, decided from its validation curve by one stated rule.

The paper trains "for 20 000 epochs on real data (and verified convergence)".  Every training
job records each member's validation objective (its own training objective, per data point,
on its validation split, with the same noise at every check) at CHECKS evenly spaced epochs.
The rule: a run has converged when the best value over the last TAIL_SHARE of its epochs
improves on the best value before them by less than TOLERANCE nats per data point.  A run
still climbing at the end has not; one that is flat (or got worse) has.
"""
from __future__ import annotations

import math

import numpy as np

CHECKS = 20            # validation checks per training run, evenly spaced over its epochs
TAIL_SHARE = 0.1       # the last tenth of the epochs ...
TOLERANCE = 0.01       # ... may improve the best validation objective by less than this (nats per point)


def check_epochs(epochs: int, checks: int = CHECKS) -> list[int]:
    """The epochs (1-based counts of epochs done) after which the validation objective is
    recorded: `checks` evenly spaced ones ending with the last (every epoch if fewer)."""
    if epochs <= 0:
        return []
    n = min(checks, epochs)
    return sorted({math.ceil(epochs * (i + 1) / n) for i in range(n)})


def tail_gain(epochs_done, values, epochs: int, tail_share: float = TAIL_SHARE) -> float:
    """Best value in the last `tail_share` of the epochs minus the best value before them
    (NaN when either part has no finite check)."""
    epochs_done = np.asarray(epochs_done, dtype=float)
    values = np.asarray(values, dtype=float)
    in_tail = epochs_done > epochs * (1 - tail_share)
    tail, head = values[in_tail & np.isfinite(values)], values[~in_tail & np.isfinite(values)]
    if len(tail) == 0 or len(head) == 0:
        return math.nan
    return float(tail.max() - head.max())


def converged(epochs_done, values, epochs: int, tolerance: float = TOLERANCE,
              tail_share: float = TAIL_SHARE) -> bool | None:
    """The rule (module docstring); None when the curve cannot decide (too few checks)."""
    gain = tail_gain(epochs_done, values, epochs, tail_share)
    return None if math.isnan(gain) else bool(gain < tolerance)
