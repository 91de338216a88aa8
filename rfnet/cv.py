"""Cross-validation by product and bootstrap intervals over products, for claims about RFNet.

Samples of one product share its image and caption, so a model that saw a product in training has
seen much of its test samples: every split here is by product (a group), never by sample. For the
same reason the bootstrap resamples products, not samples: the products are the independent units,
and resampling samples would make intervals too narrow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rfnet.evaluate import average_precision


def grouped_folds(groups: Sequence[str], k: int, seed: int) -> list[np.ndarray]:
    """k test folds (sample indices) that split the groups, shuffled by `seed`, into near-equal parts."""
    names = sorted(set(groups))
    if len(names) < k:
        raise ValueError(f"{len(names)} groups cannot make {k} folds")
    np.random.default_rng(seed).shuffle(names)
    fold_of = {g: i % k for i, g in enumerate(names)}
    f = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(f == i) for i in range(k)]


def grouped_split(groups: Sequence[str], idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`idx` cut into (rest, held) with about `fraction` of its groups held out (an inner validation split)."""
    names = sorted({groups[i] for i in idx})
    np.random.default_rng(seed).shuffle(names)
    held = set(names[: max(1, round(fraction * len(names)))])
    mask = np.array([groups[i] in held for i in idx])
    return idx[~mask], idx[mask]


def bootstrap_diff(y: np.ndarray, a: np.ndarray, b: np.ndarray, groups: Sequence[str], n_boot: int = 2000,
                   seed: int = 0, metric: Callable[[np.ndarray, np.ndarray], float] = average_precision) -> dict:
    """metric(a) - metric(b) on the same samples, with a 95% percentile interval from resampling groups.

    `a` and `b` are scores of shape (N,) or (R, N): R repeats (e.g. of cross-validation, each a pooled
    out-of-fold prediction of every sample); the difference is then the mean over repeats, so the
    interval covers which products were drawn, with training noise averaged over the repeats."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    members = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    parts = [np.array(v) for v in members.values()]

    def diff(ix):
        return float(np.mean([metric(y[ix], ar[ix]) - metric(y[ix], br[ix]) for ar, br in zip(a, b)]))

    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        ix = np.concatenate([parts[j] for j in rng.integers(len(parts), size=len(parts))])
        if 0 < y[ix].sum() < len(ix):  # a draw with one class has no AP
            draws.append(diff(ix))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"diff": diff(np.arange(len(y))), "ci95": [float(lo), float(hi)], "n_boot": len(draws)}


def mean_sd(values: Sequence[float]) -> dict:
    """Mean and SD of per-fold figures; a fold with no positive has no AP (NaN): left out, and counted."""
    v = np.asarray(values, dtype=float)
    bad = int(np.isnan(v).sum())
    v = v[~np.isnan(v)]
    out = {"mean": float(v.mean()) if len(v) else float("nan"), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
           "n": int(len(v))}
    return {**out, "undefined": bad} if bad else out
