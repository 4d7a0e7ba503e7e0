"""Small numeric helpers of the benchmark: robust summaries, the per-frame memory slope, and the search for the
largest frame count that fits a memory budget. No torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np


def summarize(values: Sequence[float]) -> dict[str, object]:
    """``{"median", "min", "max", "all"}`` of repeated measurements (seconds or bytes)."""
    if len(values) == 0:
        raise ValueError("summarize needs at least one measurement, got none")
    arr = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max()),
            "all": [float(v) for v in arr]}


def safe_ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """``numerator / denominator``, or ``None`` when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    value = float(numerator) / float(denominator)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class LinearFit:
    """Least-squares line ``y = slope * x + intercept`` (``r2``: coefficient of determination)."""

    slope: float
    intercept: float
    r2: float

    def predict(self, x: float) -> float:
        return self.slope * float(x) + self.intercept

    def solve(self, y: float) -> Optional[float]:
        """The ``x`` at which the line reaches ``y`` (``None`` for a non-positive slope)."""
        if not self.slope > 0:
            return None
        return (float(y) - self.intercept) / self.slope

    def as_dict(self) -> dict[str, float]:
        return {"slope": self.slope, "intercept": self.intercept, "r2": self.r2}


def fit_line(x: Sequence[float], y: Sequence[float]) -> LinearFit:
    """Fit ``y = slope * x + intercept`` with :func:`numpy.polyfit` (degree 1).

    ``x`` and ``y`` need the same length and at least two distinct ``x`` values; with exactly two points the
    line passes through both. Used for "peak memory vs frames" (slope = bytes per extra frame).
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise ValueError(f"x and y must be 1-D sequences of equal length, got shapes {xs.shape} and {ys.shape}")
    if np.unique(xs).size < 2:
        raise ValueError(f"a line fit needs at least two distinct x values, got {xs.tolist()}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ValueError("x and y must be finite")
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = ys - (slope * xs + intercept)
    total = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - float((residual ** 2).sum()) / total if total > 0 else 1.0
    return LinearFit(float(slope), float(intercept), r2)


@dataclass
class SearchResult:
    """Outcome of :func:`largest_fitting`.

    ``best``: the largest value found to fit (0 when even ``lower`` does not fit); ``first_failure``: the
    smallest value seen not to fit (``None`` when none failed, e.g. the search stopped at ``upper``);
    ``capped``: ``upper`` itself fits, so the true limit may be higher; ``probes``: ``(value, fits)`` in the order
    they were tried; ``exhausted``: the probe allowance ran out before the bracket closed.
    """

    best: int
    first_failure: Optional[int]
    capped: bool
    exhausted: bool
    probes: list = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"best": self.best, "first_failure": self.first_failure, "capped": self.capped,
                "exhausted": self.exhausted, "probes": [{"frames": v, "fits": f} for v, f in self.probes]}


def largest_fitting(fits: Callable[[int], bool], start: int, lower: int = 1, upper: int = 4096,
                    max_probes: int = 24) -> SearchResult:
    """Largest integer ``n`` in ``[lower, upper]`` with ``fits(n)``, assuming ``fits`` is monotone (true up to a
    limit, false beyond).

    The search gallops from the guess ``start`` (doubling the step up while it fits, or down while it does not)
    until the limit is bracketed, then bisects; a good guess (e.g. from the memory-vs-frames line) closes the
    bracket in two probes. No value is probed twice.
    """
    if lower < 1 or upper < lower:
        raise ValueError(f"need 1 <= lower <= upper, got lower={lower}, upper={upper}")
    if max_probes < 1:
        raise ValueError(f"max_probes must be >= 1, got {max_probes}")
    start = min(max(int(start), lower), upper)
    seen: dict[int, bool] = {}
    probes: list[tuple[int, bool]] = []

    def probe(n: int) -> bool:
        if n not in seen:
            seen[n] = bool(fits(n))
            probes.append((n, seen[n]))
        return seen[n]

    def budget_left() -> bool:
        return len(probes) < max_probes

    lo: Optional[int] = None  # largest known to fit
    hi: Optional[int] = None  # smallest known to fail
    if probe(start):
        lo, step = start, 1
        while budget_left():
            if lo == upper:
                break
            candidate = min(lo + step, upper)
            if probe(candidate):
                lo, step = candidate, step * 2
            else:
                hi = candidate
                break
    else:
        hi, step = start, 1
        while budget_left():
            if hi == lower:
                break
            candidate = max(hi - step, lower)
            if probe(candidate):
                lo = candidate
                break
            hi, step = candidate, step * 2
    if lo is None:
        exhausted = hi is not None and hi > lower
        return SearchResult(best=0, first_failure=hi, capped=False, exhausted=exhausted, probes=probes)
    while hi is not None and hi - lo > 1 and budget_left():
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    exhausted = (hi is not None and hi - lo > 1) or (hi is None and lo < upper)
    return SearchResult(best=lo, first_failure=hi, capped=hi is None and lo == upper, exhausted=exhausted,
                        probes=probes)


def proc_kib(path: str, key: str) -> Optional[int]:
    """The ``key:`` line of a ``/proc`` status file (``VmHWM``, ``MemAvailable``, ...) in bytes, or ``None``."""
    try:
        with open(path, "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
