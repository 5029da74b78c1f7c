"""The simulator: reproducible, realistic in the ways the fraud system depends on."""

from collections import defaultdict
from datetime import timedelta

import pytest
from pydantic import ValidationError

from simulator import SimulationConfig, read_simulation, simulate, write_simulation


@pytest.fixture(scope="module")
def sim():
    return simulate(SimulationConfig(seed=11, days=7, n_customers=2000))


def test_same_seed_same_stream_other_seed_other_stream(sim):
    again = simulate(SimulationConfig(seed=11, days=7, n_customers=2000))
    assert again.transactions == sim.transactions and again.labels == sim.labels
    other = simulate(SimulationConfig(seed=12, days=7, n_customers=2000))
    assert other.transactions[:100] != sim.transactions[:100]


def test_sorted_by_event_time_with_unique_ids(sim):
    times = [t.event_time for t in sim.transactions]
    assert times == sorted(times)
    assert len({t.transaction_id for t in sim.transactions}) == len(sim.transactions)
    assert all(t.event_time.tzinfo is not None for t in sim.transactions[:100])


def test_fraud_is_rare_and_every_scenario_occurs(sim):
    summary = sim.summary()
    assert 0.002 < summary["fraud_rate"] < 0.02
    assert set(summary["fraud_by_scenario"]) == {"card_testing", "account_takeover", "compromised_merchant"}


def test_chargebacks_arrive_after_the_payment_and_not_for_all_fraud(sim):
    when = {t.transaction_id: t.event_time for t in sim.transactions}
    fraud = {g.transaction_id for g in sim.truth if g.is_fraud}
    assert all(lb.known_at > when[lb.transaction_id] for lb in sim.labels)
    assert {lb.transaction_id for lb in sim.labels} < fraud  # strictly: some fraud never reported
    delays = sorted((lb.known_at - when[lb.transaction_id]) for lb in sim.labels)
    assert timedelta(hours=12) < delays[len(delays) // 2] < timedelta(days=5)


def test_account_takeover_uses_a_new_device_abroad(sim):
    scenario = {g.transaction_id: g.scenario for g in sim.truth}
    seen_devices = defaultdict(set)
    checked = 0
    for t in sim.transactions:
        if scenario[t.transaction_id] == "account_takeover":
            assert t.country != t.card_country
            assert t.device_id.startswith("dev-x-") and t.device_id not in seen_devices[t.customer_id]
            checked += 1
        elif scenario[t.transaction_id] is None:
            seen_devices[t.customer_id].add(t.device_id)
    assert checked > 0


def test_card_testing_is_a_burst_of_tiny_payments_on_one_card(sim):
    scenario = {g.transaction_id: g.scenario for g in sim.truth}
    by_card = defaultdict(list)
    for t in sim.transactions:
        if scenario[t.transaction_id] == "card_testing" and t.amount_minor <= 300:
            by_card[(t.card_id, t.device_id)].append(t.event_time)
    assert by_card
    for times in by_card.values():
        assert len(times) >= 5 and max(times) - min(times) < timedelta(minutes=30)


def test_write_read_round_trip(sim, tmp_path):
    write_simulation(sim, tmp_path)
    back = read_simulation(tmp_path)
    assert back.transactions == sim.transactions and back.labels == sim.labels and back.truth == sim.truth


def test_drift_raises_amounts_from_its_start_day():
    base = simulate(SimulationConfig(seed=3, days=4, n_customers=1000))
    drifted = simulate(SimulationConfig(seed=3, days=4, n_customers=1000, drift_start_day=2, drift_amount_factor=2.0))

    def mean_late_amount(s):
        late = [
            t.amount_minor
            for t, g in zip(s.transactions, s.truth, strict=True)
            if not g.is_fraud and (t.event_time - s.transactions[0].event_time).days >= 2
        ]
        return sum(late) / len(late)

    assert mean_late_amount(drifted) > 1.5 * mean_late_amount(base)


@pytest.mark.parametrize(("field", "value"), [("days", 0), ("n_customers", -1), ("unreported_fraud_fraction", 2)])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        SimulationConfig(**{field: value})
