"""Reason codes: which features pushed a flagged or blocked payment's score up, in words.

Contributions are XGBoost's TreeSHAP values (``Booster.predict(..., pred_contribs=True)``) from the
native copy of the served model (``models/<version>/xgboost.ubj``): per feature, the log-odds it added
to the score, plus a bias column, summing to the model's margin, i.e. the logit of the probability
the ONNX session served. Only rows that were flagged or blocked are explained: TreeSHAP costs far more
per row than scoring does, and an approved payment needs no explanation, so the approve path never
touches the booster. A missing native file or a failure while explaining leaves the decision as it
is, without reasons (logged and counted in ``ReasonExplainer.unexplained``): an explanation must
never stop a payment.

The words come from the feature declaration (``streaming.features``: entity, window, aggregation),
one template per family, not one hand-written string per feature. "usual" is the typical value of
the training population: the median read off the model's drift reference (the training histograms
stored with the model, deciles or discrete values). For a card's velocity the card's own longer
window was considered and rejected: it already contains the burst being explained, it is empty for a
new card (where bursts matter most), and as a per-hour rate it reads as "usual: 0.04". The population
median is also what the model weighed the value against. A model without a drift reference gets the
same words without the "(usual: ...)".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from retrain.registry import ModelLoadError, RegisteredModel
from schema import Decision, Outcome, ReasonCode
from streaming.features import (
    LABEL_FEATURES,
    MERCHANT_CATEGORIES,
    MODEL_FEATURES,
    RATIO_FEATURES,
    RECENCY_FEATURES,
    WINDOWED_FEATURES,
    Aggregation,
    LabelRateFeature,
    RatioFeature,
    RecencyFeature,
    Window,
    WindowedFeature,
)

if TYPE_CHECKING:
    import xgboost as xgb

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 3


def needs_reasons(decision: Decision) -> bool:
    """A model-scored decision that was not approved and has no reason codes yet."""
    return decision.outcome is not Outcome.APPROVE and decision.score is not None and not decision.reasons


# (how the entity is named, the preposition a payment takes with it)
_ENTITY_WORDS: dict[str, tuple[str, str]] = {
    "card": ("this card", "on"),
    "customer": ("this customer", "by"),
    "merchant": ("this merchant", "at"),
    "device": ("this device", "from"),
}
# DISTINCT features count values of a transaction field: (singular, plural) of what is counted.
_FIELD_NOUNS: dict[str, tuple[str, str]] = {
    "merchant_id": ("merchant", "merchants"),
    "country": ("country", "countries"),
    "device_id": ("device", "devices"),
}

Row = Mapping[str, float]
Template = Callable[[Row, Mapping[str, float]], str]


# --- numbers for people -------------------------------------------------------------------------


def _plural(n: float, singular: str, plural: str | None = None) -> str:
    return singular if n == 1 else (plural or singular + "s")


def _count(x: float) -> str:
    return f"{round(x):,}" if abs(x - round(x)) < 0.05 else f"{x:,.1f}"


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _percent(x: float) -> str:
    p = 100.0 * x
    if p == 0:
        return "0%"
    return f"{p:.2f}%" if p < 0.1 else f"{p:.1f}%" if p < 10 else f"{p:.0f}%"


def _ratio(x: float) -> str:
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×"


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        # Switch to a unit once there are at least 1.5 of it: "90 minutes", then "2 hours".
        if seconds >= 1.5 * size:
            n = round(seconds / size)
            return f"{n} {_plural(n, unit)}"
    n = round(seconds)
    return f"{n} {_plural(n, 'second')}"


def _span(window: Window) -> str:
    """The window as the end of "in the last ...": "minute", "10 minutes", "hour", "24 hours", "7 days"."""
    if window.length_s == 60:
        return "minute"
    if window.length_s == 3600:
        return "hour"
    return _duration(window.length_s)


def _usual(typical: Mapping[str, float], name: str, fmt: Callable[[float], str]) -> str:
    return f" (usual: {fmt(typical[name])})" if name in typical else ""


# --- one template per feature family, built from the declaration ----------------------------------


def _windowed(feature: WindowedFeature) -> Template:
    entity, prep = _ENTITY_WORDS[feature.entity]
    span = _span(feature.window)
    name = feature.name
    agg = feature.aggregation
    if agg is Aggregation.COUNT:

        def count(row: Row, typical: Mapping[str, float]) -> str:
            n = row[name]
            usual = _usual(typical, name, lambda u: _count(round(u)))
            return f"{_count(n)} {_plural(n, 'payment')} {prep} {entity} in the last {span}{usual}"

        return count
    if agg is Aggregation.DISTINCT:
        one, many = _FIELD_NOUNS.get(feature.field or "", (f"distinct {feature.field}", f"distinct {feature.field}"))

        def distinct(row: Row, typical: Mapping[str, float]) -> str:
            n = row[name]
            usual = _usual(typical, name, lambda u: _count(round(u)))
            return f"{_count(n)} {_plural(n, one, many)} {prep} {entity} in the last {span}{usual}"

        return distinct
    lead = {
        Aggregation.SUM: ("{v} paid", "in"),
        Aggregation.MEAN: ("average payment {v}", "over"),
        Aggregation.MAX: ("largest payment {v}", "in"),
    }[agg]

    def amount(row: Row, typical: Mapping[str, float]) -> str:
        head = lead[0].format(v=_money(row[name]))
        return f"{head} {prep} {entity} {lead[1]} the last {span}{_usual(typical, name, _money)}"

    return amount


def _label_rate(feature: LabelRateFeature) -> Template:
    span, name = _span(feature.window), feature.name

    def rate(row: Row, typical: Mapping[str, float]) -> str:
        return (
            f"{feature.entity} fraud rate {_percent(row[name])} over the last {span}{_usual(typical, name, _percent)}"
        )

    return rate


def _recency(feature: RecencyFeature) -> Template:
    entity, prep = _ENTITY_WORDS[feature.entity]
    name, cap = feature.name, feature.cap_s

    def since(row: Row, typical: Mapping[str, float]) -> str:
        s = row[name]
        if s >= cap:  # no earlier payment within the state kept
            return f"first payment {prep} {entity} in over {_duration(cap)}"
        if s >= 86400:  # a dormant card waking up reads better as a gap than as "9 days since"
            return f"first payment {prep} {entity} in {_duration(s)}"
        return f"{_duration(s)} since the previous payment {prep} {entity}{_usual(typical, name, _duration)}"

    return since


def _amount_ratio(feature: RatioFeature, mean: WindowedFeature) -> Template:
    owner = _ENTITY_WORDS[mean.entity][0] + "'s"
    period = _span(mean.window).replace(" days", "-day").replace(" hours", "-hour")
    name = feature.name

    def times(row: Row, typical: Mapping[str, float]) -> str:
        return (
            f"amount {_money(row['amount'])} is {_ratio(row[name])} {owner} {period} mean of "
            f"{_money(row[mean.name])}{_usual(typical, name, _ratio)}"
        )

    return times


def _templates() -> dict[str, Template]:
    windowed = {f.name: f for f in WINDOWED_FEATURES}
    templates: dict[str, Template] = {name: _windowed(f) for name, f in windowed.items()}
    templates.update({f.name: _label_rate(f) for f in LABEL_FEATURES})
    templates.update({f.name: _recency(f) for f in RECENCY_FEATURES})
    templates.update({f.name: _amount_ratio(f, windowed[f.denominator]) for f in RATIO_FEATURES})

    templates["amount"] = lambda row, typical: f"amount {_money(row['amount'])}{_usual(typical, 'amount', _money)}"

    def hour(row: Row, typical: Mapping[str, float]) -> str:
        h = int(row["hour_of_day"])
        return f"paid at {h:02d}:00-{h:02d}:59 UTC" + _usual(
            typical, "hour_of_day", lambda u: f"around {round(u) % 24:02d}:00"
        )

    templates["hour_of_day"] = hour
    templates["is_cross_border"] = lambda row, _: (
        "paid in another country than the card's" if row["is_cross_border"] else "paid in the card's own country"
    )
    templates["is_ecommerce"] = lambda row, _: "online payment" if row["is_ecommerce"] else "card-present payment"

    def category(row: Row, _: Mapping[str, float]) -> str:
        code = int(row["merchant_category_code"])
        name = MERCHANT_CATEGORIES[code] if 0 <= code < len(MERCHANT_CATEGORIES) else "unknown"
        return f"merchant category {name}"

    templates["merchant_category_code"] = category
    missing = set(MODEL_FEATURES) - set(templates)
    if missing:  # a new feature family was declared without words: fail at import, not at 3 a.m.
        raise ValueError(f"no reason-code template for features {sorted(missing)}")
    return templates


TEMPLATES: dict[str, Template] = _templates()


def describe(feature: str, row: Row, typical: Mapping[str, float] | None = None) -> str:
    """One feature of one payment in words; ``row`` holds the payment's features by name,
    ``typical`` the training population's typical value per feature (see :func:`typical_values`)."""
    return TEMPLATES[feature](row, typical or {})


def median_of_histogram(reference: Mapping[str, Any]) -> float | None:
    """The median of a drift-reference histogram (``monitoring.drift.DriftReference.to_dict`` entry).

    Discrete: the value where the cumulative count reaches half. Binned: interpolated inside the
    bin that crosses half (with decile edges, the fifth edge); None for an empty histogram.
    """
    counts = np.asarray(reference.get("counts", ()), dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    cumulative = np.cumsum(counts)
    half = total / 2
    b = int(np.searchsorted(cumulative, half, side="left"))
    values = reference.get("discrete_values")
    if values is not None:
        # The extra last bin is "values never seen in training": empty in the training histogram.
        return float(values[min(b, len(values) - 1)]) if len(values) else None
    edges = np.asarray(reference.get("edges", ()), dtype=np.float64)
    if len(edges) == 0:
        return None
    if b == 0:
        return float(edges[0])
    if b >= len(edges):
        return float(edges[-1])
    low, high = edges[b - 1], edges[b]
    share = (half - cumulative[b - 1]) / counts[b] if counts[b] else 1.0
    return float(low + share * (high - low))


def typical_values(metadata: Mapping[str, Any]) -> dict[str, float]:
    """Median per model feature from the model's drift reference (empty when it has none)."""
    reference = metadata.get("drift_reference") or {}
    typical = {}
    for name in MODEL_FEATURES:
        if name in reference:
            median = median_of_histogram(reference[name])
            if median is not None and math.isfinite(median):
                typical[name] = median
    return typical


@dataclass
class _Explained:
    """What the explainer keeps per model: its booster (or why it has none) and typical values."""

    model: RegisteredModel
    typical: dict[str, float]
    booster: xgb.Booster | None = None
    load_error: Exception | None = None


class ReasonExplainer:
    """Reason codes for the decision engine, for whichever model decided the row.

    The booster and the typical values are loaded once per model, on the first row that needs
    them (an all-approve workload never loads either). A model whose native file is missing or
    unreadable is remembered as such, so every later batch fails fast rather than retrying the disk.
    A few models are kept at once (champion, canary, the one before a swap), so that batches
    alternating between them do not reload a booster each time.
    """

    KEEP_MODELS = 4

    def __init__(self, top_k: int = DEFAULT_TOP_K) -> None:
        self.top_k = top_k
        self.unexplained = 0  # flagged/blocked decisions returned without reasons because explaining failed
        self._kept: list[_Explained] = []  # least recently used first

    def _state(self, model: RegisteredModel) -> _Explained:
        # By identity: a reloaded version is a new object, and holding it keeps its id from being reused.
        for n, state in enumerate(self._kept):
            if state.model is model:
                self._kept.append(self._kept.pop(n))
                return state
        state = _Explained(model, typical_values(model.metadata))
        self._kept = [*self._kept, state][-self.KEEP_MODELS :]
        return state

    def booster(self, model: RegisteredModel) -> xgb.Booster:
        """The native XGBoost booster of ``model`` (one thread); ModelLoadError when unavailable."""
        state = self._state(model)
        if state.booster is not None:
            return state.booster
        if state.load_error is not None:
            raise state.load_error
        try:
            import xgboost as xgb

            path = model.native_path
            if path is None or not path.exists():
                raise ModelLoadError(f"model {model.version}: no XGBoost file to explain scores with")
            booster = xgb.Booster(model_file=str(path))
            # The scorer is one core per process: TreeSHAP threads would fight the gRPC loop.
            booster.set_param({"nthread": 1})
            if booster.num_features() != len(MODEL_FEATURES):
                raise ModelLoadError(
                    f"model {model.version}: XGBoost file has {booster.num_features()} features, "
                    f"expected {len(MODEL_FEATURES)}"
                )
        except Exception as exc:  # noqa: BLE001 - remembered and re-raised to the caller, who degrades
            state.load_error = exc
            log.warning("reason codes off for model %s: %s", model.version, exc)
            raise
        state.booster = booster
        return booster

    def contributions(self, model: RegisteredModel, rows: np.ndarray) -> np.ndarray:
        """TreeSHAP contributions, shape (rows, features + 1): the last column is the bias; each row
        sums to the model's margin (log-odds) for that row."""
        import xgboost as xgb

        booster = self.booster(model)
        # float32, as the ONNX session scored it: the trees split on float32 thresholds.
        data = xgb.DMatrix(np.ascontiguousarray(rows, dtype=np.float32), nthread=1)
        return booster.predict(data, pred_contribs=True)

    def reasons_for(
        self, model: RegisteredModel, matrix: np.ndarray, indices: Sequence[int]
    ) -> dict[int, list[ReasonCode]]:
        """Top ``top_k`` features by positive contribution for the given rows of ``matrix`` (features
        in ``MODEL_FEATURES`` order), strongest first. Never raises: rows it cannot explain are
        left out of the result and counted."""
        if not indices:
            return {}
        try:
            contribs = self.contributions(model, matrix[list(indices)])
            typical = self._state(model).typical
            return {i: self._top(matrix[i], contribs[n, :-1], typical) for n, i in enumerate(indices)}
        except Exception as exc:  # noqa: BLE001 - an explanation must never fail a payment
            self.unexplained += len(indices)
            if not isinstance(exc, ModelLoadError):
                log.exception("explaining %d decisions failed; returned without reasons", len(indices))
            return {}

    def _top(self, values: np.ndarray, contribs: np.ndarray, typical: Mapping[str, float]) -> list[ReasonCode]:
        order = np.argsort(-contribs, kind="stable")[: self.top_k]
        picked = [j for j in order.tolist() if contribs[j] > 0]
        if not picked:
            return []
        row = dict(zip(MODEL_FEATURES, values.tolist(), strict=True))
        return [
            ReasonCode(
                feature=MODEL_FEATURES[j],
                value=float(values[j]),
                contribution=float(contribs[j]),
                text=describe(MODEL_FEATURES[j], row, typical),
            )
            for j in picked
        ]
