"""Reason codes: contributions that explain the served score, only for flag and block, in words."""

import math

import numpy as np
import pytest

from monitoring.drift import DriftReference
from retrain import ModelRegistry
from retrain.train import TrainingConfig, fit, to_onnx
from rules_engine import load_rules
from schema import DecisionThresholds, Outcome
from scoring import DecisionEngine, ScorerMetrics
from scoring.proto import fraud_pb2 as pb
from scoring.reasons import DEFAULT_TOP_K, describe, median_of_histogram, typical_values
from scoring.wire import decision_to_proto
from streaming import OnlineFeatureStore
from streaming.features import MODEL_FEATURES
from tests.factories import txn

pytestmark = pytest.mark.integration

VELOCITY = MODEL_FEATURES.index("card_txn_count_1h")


def _training_rows(n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Noise in every column but two: the card's payments in the last hour (mostly 1; bursts of 5 or
    more are fraud, the strong signal) and in the last 10 minutes (a weaker one). A burst in one
    batch raises both, so a flagged payment has more than one reason and the strongest is known."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, len(MODEL_FEATURES))).astype(np.float32)
    counts = rng.choice([1, 1, 1, 1, 1, 1, 1, 2, 2, 3], size=n)
    burst = rng.random(n) < 0.08
    counts[burst] = rng.integers(5, 12, size=int(burst.sum()))
    recent = rng.choice([1, 1, 1, 2, 4, 6], size=n)
    x[:, VELOCITY] = counts
    x[:, MODEL_FEATURES.index("card_txn_count_10m")] = recent
    fraud = (burst & (rng.random(n) < 0.9)) | ((recent >= 4) & (rng.random(n) < 0.3))
    return x, fraud.astype(np.int8)


def _register(root, with_native: bool) -> ModelRegistry:
    x, y = _training_rows()
    model = fit(x, y, TrainingConfig(n_estimators=40, max_depth=3))
    reference = DriftReference.from_samples({name: x[:, j] for j, name in enumerate(MODEL_FEATURES)})
    registry = ModelRegistry(root)
    version = registry.register(
        to_onnx(model, len(MODEL_FEATURES)),
        {"feature_names": list(MODEL_FEATURES), "drift_reference": reference.to_dict()},
        native_model=bytes(model.get_booster().save_raw("ubj")) if with_native else None,
    )
    registry.promote(version, {"reason": "test"})
    return registry


@pytest.fixture(scope="module")
def explained_model(tmp_path_factory):
    return _register(tmp_path_factory.mktemp("registry"), with_native=True).load()


@pytest.fixture(scope="module")
def unexplained_model(tmp_path_factory):
    return _register(tmp_path_factory.mktemp("registry-no-native"), with_native=False).load()


def _engine(client, model) -> DecisionEngine:
    return DecisionEngine(load_rules(), model, OnlineFeatureStore(client), DecisionThresholds(), ScorerMetrics())


def _burst(card: str = "card-burst", n: int = 7) -> list:
    """``n`` payments on one card a minute apart, in one batch: the k-th sees k payments in the hour."""
    return [txn(i, card=card, minutes=i) for i in range(n)]


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def test_contributions_sum_to_the_logit_of_the_served_probability(redis_client, explained_model):
    engine = _engine(redis_client, explained_model)
    decisions = engine.decide_batch(_burst())
    rows = np.array([[d.features[name] for name in MODEL_FEATURES] for d in decisions])
    contribs = engine.reasons.contributions(explained_model, rows)
    assert contribs.shape == (len(decisions), len(MODEL_FEATURES) + 1)  # the last column is the bias
    for decision, row in zip(decisions, contribs, strict=True):
        p = decision.score
        # The ONNX probability is float32: its logit is exact to ~1e-7 / (p (1 - p)).
        assert abs(row.sum() - _logit(p)) < 1e-4 + 1e-6 / (p * (1 - p)), (decision.outcome, p, row.sum())
    # Random rows too, approve-range scores included: the identity is the model's, not the burst's.
    noise = np.random.default_rng(9).normal(size=(200, len(MODEL_FEATURES))).astype(np.float32)
    noise[:, VELOCITY] = np.random.default_rng(10).integers(1, 12, size=200)
    served = explained_model.predict_proba(noise).astype(np.float64)
    sums = engine.reasons.contributions(explained_model, noise).sum(axis=1)
    assert np.max(np.abs(1 / (1 + np.exp(-sums)) - served)) < 1e-5


def test_only_flag_and_block_carry_reasons_strongest_first(redis_client, explained_model):
    engine = _engine(redis_client, explained_model)
    decisions = engine.decide_batch(_burst())
    outcomes = [d.outcome for d in decisions]
    assert Outcome.APPROVE in outcomes and any(o is not Outcome.APPROVE for o in outcomes), outcomes
    for d in decisions:
        if d.outcome is Outcome.APPROVE:
            assert d.reasons == []
            continue
        assert 1 <= len(d.reasons) <= DEFAULT_TOP_K
        pushes = [r.contribution for r in d.reasons]
        assert pushes == sorted(pushes, reverse=True) and min(pushes) > 0
        # They are the top positive contributions of this very row, with the row's values.
        row = np.array([[d.features[name] for name in MODEL_FEATURES]])
        contribs = engine.reasons.contributions(explained_model, row)[0, :-1]
        expected = [MODEL_FEATURES[j] for j in np.argsort(-contribs)[: len(d.reasons)]]
        assert [r.feature for r in d.reasons] == expected
        assert pushes == pytest.approx([float(contribs[MODEL_FEATURES.index(f)]) for f in expected])
        assert all(r.value == d.features[r.feature] for r in d.reasons)
    assert max(len(d.reasons) for d in decisions) >= 2  # so that "strongest first" was put to the test


def test_an_all_approve_batch_never_touches_the_booster(redis_client, explained_model, monkeypatch):
    engine = _engine(redis_client, explained_model)
    calls = []
    real = engine.reasons.booster
    monkeypatch.setattr(engine.reasons, "booster", lambda model: calls.append(model) or real(model))
    calm = [txn(i, card=f"card-calm-{i}") for i in range(5)]
    assert [d.outcome for d in engine.decide_batch(calm)] == [Outcome.APPROVE] * 5
    assert calls == []
    assert any(d.reasons for d in engine.decide_batch(_burst("card-busy")))
    assert calls  # the same engine does explain once something is flagged


def test_a_card_velocity_burst_in_words(redis_client, explained_model):
    engine = _engine(redis_client, explained_model)
    last = engine.decide_batch(_burst())[-1]
    assert last.outcome is not Outcome.APPROVE
    top = last.reasons[0]
    assert top.feature == "card_txn_count_1h" and top.value == 7.0
    # "usual" is the training population's median: seven in ten training cards paid once an hour.
    assert top.text == "7 payments on this card in the last hour (usual: 1)"


def test_words_for_each_family():
    row = {name: 1.0 for name in MODEL_FEATURES} | {
        "amount": 1240.0,
        "card_amount_mean_30d": 149.4,
        "card_amount_to_mean_30d": 8.3,
        "card_distinct_countries_24h": 3.0,
        "merchant_fraud_rate_7d": 0.041,
        "card_seconds_since_previous": 9 * 86400.0,
        "card_amount_sum_1h": 2480.5,
    }
    typical = {"card_distinct_countries_24h": 1.0, "merchant_fraud_rate_7d": 0.002, "card_amount_sum_1h": 31.0}
    assert describe("card_amount_to_mean_30d", row) == "amount 1,240.00 is 8.3× this card's 30-day mean of 149.40"
    assert describe("card_distinct_countries_24h", row, typical) == (
        "3 countries on this card in the last 24 hours (usual: 1)"
    )
    assert describe("merchant_fraud_rate_7d", row, typical) == (
        "merchant fraud rate 4.1% over the last 7 days (usual: 0.2%)"
    )
    assert describe("card_seconds_since_previous", row) == "first payment on this card in 9 days"
    assert describe("card_amount_sum_1h", row, typical) == "2,480.50 paid on this card in the last hour (usual: 31.00)"
    assert describe("device_txn_count_1m", row) == "1 payment from this device in the last minute"
    # Every model feature has words, whatever its value.
    assert all(describe(name, row, typical) for name in MODEL_FEATURES)


def test_usual_is_the_median_of_the_training_histogram():
    rng = np.random.default_rng(1)
    amounts = rng.lognormal(3.0, 1.0, size=5000)
    counts = rng.choice([1.0, 1.0, 1.0, 2.0, 4.0], size=5000)
    reference = DriftReference.from_samples({"amount": amounts, "card_txn_count_1h": counts}).to_dict()
    assert median_of_histogram(reference["amount"]) == pytest.approx(np.median(amounts), rel=0.01)
    assert median_of_histogram(reference["card_txn_count_1h"]) == 1.0
    assert typical_values({"drift_reference": reference}) == {
        "amount": median_of_histogram(reference["amount"]),
        "card_txn_count_1h": 1.0,
    }
    assert typical_values({}) == {}


def test_a_model_without_its_xgboost_file_still_decides_without_reasons(redis_client, unexplained_model, caplog):
    engine = _engine(redis_client, unexplained_model)
    for _ in range(2):  # the missing file is found once and remembered; later batches fail fast
        decisions = engine.decide_batch(_burst())
        assert any(d.outcome is not Outcome.APPROVE for d in decisions)
        assert all(d.score is not None and d.degraded_reason is None and d.reasons == [] for d in decisions)
    flagged = sum(d.outcome is not Outcome.APPROVE for d in decisions)
    assert engine.reasons.unexplained == 2 * flagged
    assert sum("reason codes off" in r.message for r in caplog.records) == 1


def test_a_failure_while_explaining_does_not_fail_the_payment(redis_client, explained_model, monkeypatch):
    engine = _engine(redis_client, explained_model)

    def broken(model, rows):
        raise RuntimeError("booster exploded")

    monkeypatch.setattr(engine.reasons, "contributions", broken)
    decisions = engine.decide_batch(_burst())
    assert [d.reasons for d in decisions] == [[]] * len(decisions)
    assert engine.reasons.unexplained == sum(d.outcome is not Outcome.APPROVE for d in decisions) > 0


def test_the_explainer_follows_a_swapped_model(redis_client, unexplained_model, explained_model):
    engine = _engine(redis_client, unexplained_model)
    assert not any(d.reasons for d in engine.decide_batch(_burst("card-a")))
    engine.model = explained_model  # what the scenario runner and a hot reload do
    assert any(d.reasons for d in engine.decide_batch(_burst("card-b")))


def test_the_grpc_decision_carries_the_reasons(redis_client, explained_model):
    last = _engine(redis_client, explained_model).decide_batch(_burst())[-1]
    message = pb.Decision.FromString(decision_to_proto(last).SerializeToString())
    assert [(r.feature, r.value, r.contribution, r.text) for r in message.reasons] == [
        (r.feature, r.value, r.contribution, r.text) for r in last.reasons
    ]
    assert message.reasons[0].text == "7 payments on this card in the last hour (usual: 1)"


def test_alternating_models_keep_their_boosters(tmp_path, explained_model):
    """A canary batch, then a champion batch, then the canary again: nothing is reloaded."""
    from scoring.reasons import ReasonExplainer

    other = _register(tmp_path, with_native=True).load()
    explainer = ReasonExplainer()
    first, second = explainer.booster(explained_model), explainer.booster(other)
    assert first is not second
    assert explainer.booster(explained_model) is first and explainer.booster(other) is second
