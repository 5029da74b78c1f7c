"""The drift schedule: every change does what it says, only while it is active, and the ground truth
names the payments it shaped. Each run is compared with the same seed without the change."""

from collections import Counter
from statistics import median

import msgspec
import pytest

from simulator import (
    ConceptChange,
    CovariateChange,
    FraudSignature,
    NewPatternChange,
    ScenarioRates,
    SimulationConfig,
    simulate,
)

START = SimulationConfig().start
DEFAULT_RATES = ScenarioRates()
BUSY = ScenarioRates(card_testing=8, account_takeover=20, compromised_merchant=6, bust_out=6, friendly_fraud=20)


def run(*changes, scenarios=DEFAULT_RATES):
    return simulate(SimulationConfig(seed=9, days=6, n_customers=1500, scenarios=scenarios, changes=changes))


@pytest.fixture(scope="module")
def base():
    return run()


@pytest.fixture(scope="module")
def busy_base():
    return run(scenarios=BUSY)


def day(t):
    return (t.event_time - START).days


def content(t):
    """Everything but the transaction id (ids shift when a change adds or removes payments)."""
    return msgspec.structs.astuple(t)[1:]


def rows(sim, *, fraud=None, days=range(99), tagged=None):
    """(transaction, truth) pairs, filtered."""
    return [
        (t, g)
        for t, g in zip(sim.transactions, sim.truth, strict=True)
        if (fraud is None or g.is_fraud == fraud) and day(t) in days and (tagged is None or bool(g.changes) == tagged)
    ]


def legit_outside(sim, start, end):
    return [content(t) for t, _ in rows(sim, fraud=False) if not start <= day(t) < end]


def test_amount_factor_scales_every_legit_payment_only_while_active(base):
    sim = run(CovariateChange(name="pricier", start_day=2, end_day=4, amount_factor=2.0))
    assert legit_outside(sim, 2, 4) == legit_outside(base, 2, 4)
    assert not rows(sim, days=[0, 1, 4, 5], tagged=True)
    inside, before = rows(sim, fraud=False, days=[2, 3]), rows(base, fraud=False, days=[2, 3])
    assert all(g.changes == ("pricier",) for _, g in inside)
    ratios = [t.amount_minor / b.amount_minor for (t, _), (b, _) in zip(inside, before, strict=True)]
    assert 1.98 < sum(ratios) / len(ratios) < 2.02
    assert [content(t) for t, _ in rows(sim, fraud=True)] == [content(t) for t, _ in rows(base, fraud=True)]


def test_volume_factor_adds_tagged_payments_and_keeps_the_others(base):
    sim = run(CovariateChange(name="busier", start_day=2, end_day=4, volume_factor=1.5))
    untouched = [content(t) for t, _ in rows(sim, fraud=False, tagged=False)]
    assert untouched == [content(t) for t, _ in rows(base, fraud=False)]
    extra = rows(sim, tagged=True)
    assert {day(t) for t, _ in extra} == {2, 3} and all(g.changes == ("busier",) for _, g in extra)
    assert 0.4 < len(extra) / len(rows(base, fraud=False, days=[2, 3])) < 0.6


def test_a_new_category_has_payments_only_while_its_change_is_active(base):
    boost = CovariateChange(name="crypto-craze", start_day=2, end_day=4, category_boost={"crypto": 0.1})
    sim = run(boost)
    crypto = [(t, g) for t, g in rows(sim) if t.merchant_category == "crypto"]
    assert {day(t) for t, _ in crypto} == {2, 3}
    assert all(not g.is_fraud and g.changes == ("crypto-craze",) for _, g in crypto)
    assert 0.08 < len(crypto) / len(rows(sim, fraud=False, days=[2, 3])) < 0.12
    known_merchants = {t.merchant_id for t in base.transactions}
    assert not {t.merchant_id for t, _ in crypto} & known_merchants  # its merchants are new
    assert legit_outside(sim, 2, 4) == legit_outside(base, 2, 4)
    assert {g.changes for _, g in rows(sim, days=[2, 3], tagged=True)} == {("crypto-craze",)}


def test_a_category_boost_tags_the_payments_it_moved(base):
    sim = run(CovariateChange(name="trips", start_day=1, end_day=3, category_boost={"travel": 0.2}))
    moved = rows(sim, tagged=True)
    assert moved and all(t.merchant_category == "travel" for t, _ in moved)
    share = Counter(t.merchant_category for t, _ in rows(sim, fraud=False, days=[1, 2]))
    before = Counter(t.merchant_category for t, _ in rows(base, fraud=False, days=[1, 2]))
    assert share["travel"] / share.total() > before["travel"] / before.total() + 0.15


def test_new_device_share_moves_switched_customers_to_new_devices_while_active(base):
    sim = run(CovariateChange(name="phone-launch", start_day=2, end_day=4, new_device_share=0.3))
    assert legit_outside(sim, 2, 4) == legit_outside(base, 2, 4)
    seen_before = {t.device_id for t, _ in rows(sim, days=[0, 1])}
    switched = rows(sim, fraud=False, tagged=True)
    assert {day(t) for t, _ in switched} == {2, 3}
    assert not {t.device_id for t, _ in switched} & seen_before
    customers = {t.customer_id for t, _ in rows(sim, fraud=False, days=[2, 3])}
    assert 0.25 < len({t.customer_id for t, _ in switched}) / len(customers) < 0.35
    # One new device per switched customer, used for all of their payments while active.
    per_customer = {}
    for t, g in rows(sim, fraud=False, days=[2, 3]):
        if t.customer_id in {s.customer_id for s, _ in switched}:
            assert g.changes == ("phone-launch",)
            assert per_customer.setdefault(t.customer_id, t.device_id) == t.device_id


def test_ecommerce_share_tags_exactly_the_payments_whose_channel_it_flipped(base):
    sim = run(CovariateChange(name="online-shift", start_day=2, end_day=4, ecommerce_share=0.9))
    inside, before = rows(sim, fraud=False, days=[2, 3]), rows(base, fraud=False, days=[2, 3])
    for (t, g), (b, _) in zip(inside, before, strict=True):
        assert content(msgspec.structs.replace(t, channel=b.channel)) == content(b)
        assert bool(g.changes) == (t.channel != b.channel)
    assert 0.87 < sum(t.channel == "ecommerce" for t, _ in inside) / len(inside) < 0.93
    assert legit_outside(sim, 2, 4) == legit_outside(base, 2, 4)


def test_a_concept_change_rewrites_one_pattern_from_its_start_day(busy_base):
    native = FraudSignature(abroad=False, new_device=False, amount_median_minor=9_000)
    sim = run(
        ConceptChange(name="ato-native", start_day=3, scenario="account_takeover", signature=native), scenarios=BUSY
    )
    ato = [(t, g) for t, g in rows(sim) if g.scenario == "account_takeover"]
    before = [t for t, g in ato if not g.changes]
    after = [(t, g) for t, g in ato if g.changes]
    assert before and after and all(g.changes == ("ato-native",) for _, g in after)
    assert min(day(t) for t, _ in after) == 3
    assert all(day(t) < 3 or (day(t) == 3 and t.event_time.hour < 3) for t in before)  # a spree may pass midnight
    assert all(t.country != t.card_country and t.device_id.startswith("dev-x-") for t in before)
    assert all(not t.device_id.startswith("dev-x-") for t, _ in after)
    assert sum(t.country == t.card_country for t, _ in after) > 0.7 * len(after)
    assert 6_000 < median(t.amount_minor for t, _ in after) < 13_000
    others = [content(t) for t, g in rows(sim) if g.scenario != "account_takeover"]
    assert others == [content(t) for t, g in rows(busy_base) if g.scenario != "account_takeover"]


def test_a_new_pattern_appears_on_its_start_day_and_stops_at_its_end():
    wave = NewPatternChange(
        name="bust-out-wave", start_day=2, end_day=4, scenario="bust_out", rate=30, signature={"payments": (6, 8)}
    )
    sim = run(wave, scenarios=BUSY.model_copy(update={"bust_out": 0.0}))
    bust_out = [(t, g) for t, g in rows(sim) if g.scenario == "bust_out"]
    assert bust_out and all(g.changes == ("bust-out-wave",) for _, g in bust_out)
    sprees = Counter(t.card_id for t, _ in bust_out)
    assert all(n <= 8 for n in sprees.values())
    first = {}
    for t, _ in bust_out:
        first.setdefault(t.card_id, day(t))
    assert set(first.values()) <= {2, 3}
    assert not rows(sim, fraud=False, tagged=True)  # a new pattern touches only its own fraud


def test_a_new_pattern_adds_to_the_base_rate(busy_base):
    sim = run(NewPatternChange(name="more-ato", start_day=1, scenario="account_takeover", rate=20), scenarios=BUSY)
    ato = [g for _, g in rows(sim) if g.scenario == "account_takeover"]
    assert any(g.changes == ("more-ato",) for g in ato) and any(not g.changes for g in ato)
    before = sum(g.scenario == "account_takeover" for g in busy_base.truth)
    assert len(ato) > 1.5 * before
    assert sim.summary()["changes"]["more-ato"] == sum(bool(g.changes) for g in ato)
