"""Distribution drift of features and scores against the training reference: KL divergence and PSI.

Binning: each feature's bin edges are the training sample's deciles, with open outer edges
(-inf, +inf) so live values outside the training range land in the end bins rather than vanish.
A feature with few distinct values (counts, flags) gets one bin per value instead, because quantile
edges on a discrete feature collapse onto each other. A categorical feature (merchant category,
hour of day) always gets one bin per training category, for its ``max_categories`` most frequent
ones; every other value, including categories never seen in training, lands in a final "other"
bin, so a brand-new category shows up as mass moving into "other".

Smoothing: before normalising, ``smoothing`` pseudo-counts (default 0.5, the Jeffreys prior) are
added to every bin of both histograms. KL(p || q) is infinite wherever q has an empty bin that p
uses; on live traffic that happens as soon as a rare value appears, and an alert that says
"infinity" carries no information. The pseudo-count keeps the statistic finite and barely moves it
when bins are well filled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import entropy

DEFAULT_BINS = 10
DEFAULT_SMOOTHING = 0.5
MAX_CATEGORIES = 30


@dataclass(frozen=True)
class FeatureReference:
    edges: np.ndarray  # inner edges; bins are (-inf, e0], (e0, e1], ..., (e_last, inf)
    counts: np.ndarray  # reference count per bin
    discrete_values: np.ndarray | None = None  # set when the feature got one bin per value

    def histogram(self, values: np.ndarray) -> np.ndarray:
        if self.discrete_values is not None:
            # Values never seen in training go to an extra "other" bin.
            idx = np.searchsorted(self.discrete_values, values)
            known = (idx < len(self.discrete_values)) & (
                self.discrete_values[np.minimum(idx, len(self.discrete_values) - 1)] == values
            )
            counts = np.bincount(np.where(known, idx, len(self.discrete_values)), minlength=len(self.counts))
            return counts.astype(np.float64)
        return np.bincount(np.searchsorted(self.edges, values, side="left"), minlength=len(self.counts)).astype(
            np.float64
        )


class DriftReference:
    """Per-feature reference histograms from training data (stored with the model's metadata)."""

    def __init__(self, features: dict[str, FeatureReference]) -> None:
        self.features = features

    @classmethod
    def from_samples(
        cls,
        samples: dict[str, np.ndarray],
        n_bins: int = DEFAULT_BINS,
        categorical: Iterable[str] = (),
        max_categories: int = MAX_CATEGORIES,
    ) -> DriftReference:
        categorical = set(categorical)
        refs = {}
        for name, values in samples.items():
            values = np.asarray(values, dtype=np.float64)
            distinct, counts = np.unique(values, return_counts=True)
            if name in categorical:
                kept = np.sort(distinct[np.argsort(-counts, kind="stable")[:max_categories]])
                ref = FeatureReference(np.empty(0), np.zeros(len(kept) + 1), discrete_values=kept)
            elif len(distinct) <= n_bins:
                ref = FeatureReference(np.empty(0), np.zeros(len(distinct) + 1), discrete_values=distinct)
            else:
                edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
                ref = FeatureReference(edges, np.zeros(len(edges) + 1))
            refs[name] = FeatureReference(ref.edges, ref.histogram(values), ref.discrete_values)
        return cls(refs)

    def to_dict(self) -> dict[str, Any]:
        return {
            name: {
                "edges": ref.edges.tolist(),
                "counts": ref.counts.tolist(),
                "discrete_values": None if ref.discrete_values is None else ref.discrete_values.tolist(),
            }
            for name, ref in self.features.items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReference:
        return cls(
            {
                name: FeatureReference(
                    np.array(d["edges"], dtype=np.float64),
                    np.array(d["counts"], dtype=np.float64),
                    None if d["discrete_values"] is None else np.array(d["discrete_values"], dtype=np.float64),
                )
                for name, d in data.items()
            }
        )


def _smoothed(counts: np.ndarray, smoothing: float) -> np.ndarray:
    counts = counts + smoothing
    return counts / counts.sum()


def kl_divergence(current: np.ndarray, reference: np.ndarray, smoothing: float = DEFAULT_SMOOTHING) -> float:
    """KL(current || reference) in nats, from bin counts, with additive smoothing."""
    return float(entropy(_smoothed(current, smoothing), _smoothed(reference, smoothing)))


def psi(current: np.ndarray, reference: np.ndarray, smoothing: float = DEFAULT_SMOOTHING) -> float:
    """Population stability index: sum (p - q) ln(p / q) over the smoothed bin proportions."""
    p, q = _smoothed(current, smoothing), _smoothed(reference, smoothing)
    return float(np.sum((p - q) * np.log(p / q)))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kl: float | None
    psi: float | None
    n_current: int
    drifted: bool
    most_shifted_bin: int | None = None  # the bin whose share moved most
    note: str = ""


def compare(
    reference: DriftReference,
    current: dict[str, np.ndarray],
    threshold: float = 0.1,
    min_samples: int = 50,
    smoothing: float = DEFAULT_SMOOTHING,
) -> list[FeatureDrift]:
    """Drift of every reference feature, most drifted first. Missing or thin features are reported, not skipped."""
    results = []
    for name, ref in reference.features.items():
        values = current.get(name)
        if values is None:
            results.append(FeatureDrift(name, None, None, 0, False, note="missing from current data"))
            continue
        values = np.asarray(values, dtype=np.float64)
        if len(values) < min_samples:
            results.append(
                FeatureDrift(name, None, None, len(values), False, note=f"only {len(values)} values (< {min_samples})")
            )
            continue
        counts = ref.histogram(values)
        kl = kl_divergence(counts, ref.counts, smoothing)
        shift = np.abs(_smoothed(counts, smoothing) - _smoothed(ref.counts, smoothing))
        results.append(
            FeatureDrift(name, kl, psi(counts, ref.counts, smoothing), len(values), kl > threshold, int(shift.argmax()))
        )
    return sorted(results, key=lambda r: (r.kl is None, -(r.kl or 0.0)))
