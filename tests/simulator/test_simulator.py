"""The simulator: reproducible, realistic in the ways the fraud system depends on."""

from collections import Counter, defaultdict
from datetime import timedelta
from statistics import mean, median

import pytest
from pydantic import ValidationError

from schema import decode_transaction, encode
from simulator import (
    ConceptChange,
    CovariateChange,
    FraudSignature,
    NewPatternChange,
    ScenarioRates,
    SimulationConfig,
    iter_transactions,
    load_config,
    read_simulation,
    simulate,
    simulate_to_files,
    write_simulation,
)
from simulator.population import CATEGORIES

BUSY = ScenarioRates(card_testing=10, account_takeover=10, compromised_merchant=8, bust_out=8, friendly_fraud=30)


@pytest.fixture(scope="module")
def sim():
    return simulate(SimulationConfig(seed=11, days=7, n_customers=4000))


@pytest.fixture(scope="module")
def busy():
    """Fraud at several times the usual rates, so that every pattern has many incidents to check."""
    return simulate(SimulationConfig(seed=5, days=8, n_customers=3000, scenarios=BUSY))


def number(entity_id):
    return int(entity_id.rsplit("-", 1)[1])


def own_devices(pop, customer_id):
    c = number(customer_id)
    return {f"dev-{d:07d}" for d in range(pop.device_start[c], pop.device_start[c] + pop.device_count[c])}


def own_cards(pop, customer_id):
    c = number(customer_id)
    return {f"card-{d:06d}" for d in range(pop.card_start[c], pop.card_start[c] + pop.card_count[c])}


@pytest.fixture(scope="module")
def busy_population():
    from simulator.population import build_population

    return build_population(SimulationConfig(seed=5, days=8, n_customers=3000, scenarios=BUSY), seed=(5,))


def by_scenario(sim, scenario):
    return [t for t, g in zip(sim.transactions, sim.truth, strict=True) if g.scenario == scenario]


def legit(sim):
    return [t for t, g in zip(sim.transactions, sim.truth, strict=True) if not g.is_fraud]


def test_same_seed_same_stream_other_seed_other_stream(sim):
    again = simulate(SimulationConfig(seed=11, days=7, n_customers=4000))
    assert again.transactions == sim.transactions and again.labels == sim.labels and again.truth == sim.truth
    other = simulate(SimulationConfig(seed=12, days=7, n_customers=4000))
    assert other.transactions[:100] != sim.transactions[:100]


def test_sorted_by_event_time_with_unique_ids_in_global_order(sim):
    times = [t.event_time for t in sim.transactions]
    assert times == sorted(times)
    assert [t.transaction_id for t in sim.transactions] == [f"tx-11-{i:09d}" for i in range(len(sim.transactions))]
    assert [g.transaction_id for g in sim.truth] == [t.transaction_id for t in sim.transactions]
    start = SimulationConfig().start
    assert start <= times[0] and times[-1] < start + timedelta(days=7)


def test_ids_keep_their_formats(busy):
    t = busy.transactions[0]
    assert t.card_id.startswith("card-") and len(t.card_id) >= 11
    assert t.customer_id.startswith("cust-") and t.merchant_id.startswith("merch-")
    devices = {t.device_id for t in busy.transactions}
    assert all(d.startswith("dev-x-") or (d.startswith("dev-") and len(d) >= 11) for d in devices)


def test_fraud_is_rare_and_every_scenario_occurs(sim):
    summary = sim.summary()
    assert 0.002 < summary["fraud_rate"] < 0.01
    assert set(summary["fraud_by_scenario"]) == {
        "card_testing",
        "account_takeover",
        "compromised_merchant",
        "bust_out",
        "friendly_fraud",
    }


def test_a_zero_rate_switches_a_scenario_off():
    rates = BUSY.model_copy(update={"card_testing": 0.0, "friendly_fraud": 0.0})
    summary = simulate(SimulationConfig(seed=5, days=4, n_customers=1500, scenarios=rates)).summary()
    assert "card_testing" not in summary["fraud_by_scenario"] and "friendly_fraud" not in summary["fraud_by_scenario"]
    assert summary["fraud_by_scenario"]["account_takeover"] > 0


def test_weekly_and_daily_seasonality():
    sim = simulate(SimulationConfig(seed=3, days=7, n_customers=3000))  # Monday to Sunday
    per_day = Counter(t.event_time.weekday() for t in legit(sim))
    assert per_day[5] > 1.3 * per_day[6]  # Saturday shopping, quiet Sunday
    per_hour = Counter(t.event_time.hour for t in legit(sim))
    assert per_hour[18] > 5 * per_hour[3]


def test_customers_keep_their_own_daily_rhythm():
    from simulator.population import build_population

    config = SimulationConfig(seed=3, days=7, n_customers=3000)
    pop = build_population(config, seed=(3,))
    sim = simulate(config)
    hours = defaultdict(list)
    for t in legit(sim):
        shift = int(pop.rhythm_shift[int(t.customer_id.removeprefix("cust-"))])
        if abs(shift) == 3 and t.event_time.hour >= 6:  # leave out the night, where a +3 shift wraps around
            hours[shift].append(t.event_time.hour)
    assert median(hours[3]) - median(hours[-3]) >= 4  # night owls shop later than early birds


def test_risky_merchants_are_tested_more(busy, busy_population):
    pop = busy_population
    digital = pop.merchant_category == CATEGORIES.index("digital_goods")
    assert pop.merchant_risk[digital].mean() > 2 * pop.merchant_risk[~digital].mean()
    tests = [t for t in by_scenario(busy, "card_testing") if t.amount_minor < 10_000]  # not the cash-outs
    burst_merchant = {t.device_id: number(t.merchant_id) for t in tests}
    tested = [pop.merchant_risk[m] for m in burst_merchant.values()]
    assert mean(tested) > 1.1 * pop.merchant_risk[digital].mean()


def test_chargebacks_arrive_days_later_and_not_for_all_fraud(sim):
    txn = {t.transaction_id: t for t in sim.transactions}
    fraud = {g.transaction_id for g in sim.truth if g.is_fraud}
    assert all(lb.known_at > txn[lb.transaction_id].event_time for lb in sim.labels)
    assert all(lb.merchant_id == txn[lb.transaction_id].merchant_id and lb.is_fraud for lb in sim.labels)
    assert [lb.known_at for lb in sim.labels] == sorted(lb.known_at for lb in sim.labels)
    assert {lb.transaction_id for lb in sim.labels} < fraud  # strictly: some fraud never reported
    delays = sorted((lb.known_at - txn[lb.transaction_id].event_time) for lb in sim.labels)
    assert timedelta(hours=12) < delays[len(delays) // 2] < timedelta(days=8)
    assert delays[-1] <= timedelta(days=61)
    start = SimulationConfig().start
    assert sum(lb.known_at < start + timedelta(days=7) for lb in sim.labels) > len(sim.labels) / 4


def test_friendly_fraud_and_bust_outs_are_always_reported_and_later(busy):
    txn = {t.transaction_id: t for t in busy.transactions}
    known = {lb.transaction_id: lb.known_at - txn[lb.transaction_id].event_time for lb in busy.labels}
    delays = {}
    for scenario in ("friendly_fraud", "bust_out", "account_takeover"):
        rows = by_scenario(busy, scenario)
        if scenario != "account_takeover":
            assert all(t.transaction_id in known for t in rows)
        delays[scenario] = median(known[t.transaction_id] for t in rows if t.transaction_id in known)
    assert delays["friendly_fraud"] > 2 * delays["account_takeover"]
    assert delays["bust_out"] > 2 * delays["account_takeover"]


def test_an_incident_is_reported_as_a_whole(busy):
    """All chargebacks of one card testing burst arrive together, or none does."""
    known = {lb.transaction_id: lb.known_at for lb in busy.labels}
    by_device = defaultdict(set)
    for t in by_scenario(busy, "card_testing"):
        by_device[t.device_id].add(known.get(t.transaction_id))
    assert all(len(when) == 1 for when in by_device.values())
    assert any(None in when for when in by_device.values()) and any(None not in when for when in by_device.values())


def test_account_takeover_uses_a_new_device_abroad(busy):
    scenario = {g.transaction_id: g.scenario for g in busy.truth}
    seen_devices = defaultdict(set)
    checked = 0
    for t in busy.transactions:
        if scenario[t.transaction_id] == "account_takeover":
            assert t.country != t.card_country
            assert t.device_id.startswith("dev-x-") and t.device_id not in seen_devices[t.customer_id]
            assert t.amount_minor > 10_000
            checked += 1
        elif scenario[t.transaction_id] is None:
            seen_devices[t.customer_id].add(t.device_id)
    assert checked > 20


def test_card_testing_is_a_burst_of_tiny_payments_on_one_card(busy):
    by_card = defaultdict(list)
    for t in by_scenario(busy, "card_testing"):
        if t.amount_minor <= 1_000:
            by_card[(t.card_id, t.device_id)].append(t)
    assert len(by_card) > 10
    for burst in by_card.values():
        times = [t.event_time for t in burst]
        assert len(burst) >= 5 and max(times) - min(times) < timedelta(minutes=30)
        assert len({t.merchant_id for t in burst}) == 1 and all(t.merchant_category == "digital_goods" for t in burst)
        assert all(t.channel == "ecommerce" and t.device_id.startswith("dev-x-") for t in burst)


def test_bust_out_maxes_out_an_own_card_at_home_then_goes_quiet(busy, busy_population):
    usual = defaultdict(list)
    for t in legit(busy):
        usual[t.customer_id].append(t)
    sprees = defaultdict(list)
    for t in by_scenario(busy, "bust_out"):
        sprees[t.customer_id].append(t)
    assert len(sprees) > 10
    for customer, spree in sprees.items():
        first, last = spree[0].event_time, spree[-1].event_time
        history = [t for t in usual[customer] if t.event_time < first]
        assert history, "a bust-out customer has a history"
        assert median(t.amount_minor for t in spree) > 5 * median(t.amount_minor for t in history)
        assert {t.device_id for t in spree} <= own_devices(busy_population, customer)
        assert {t.card_id for t in spree} <= own_cards(busy_population, customer)
        assert last - first < timedelta(days=3)
        if first < SimulationConfig().start + timedelta(days=8 - 3):  # else the run may end mid-spree
            assert len(spree) >= 6 and len({t.merchant_id for t in spree}) > 2
        next_day = first.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        assert not [t for t in usual[customer] if t.event_time >= next_day], "then nothing"
    domestic = [t.country == t.card_country for spree in sprees.values() for t in spree]
    assert sum(domestic) > 0.7 * len(domestic)


def test_friendly_fraud_looks_like_the_customers_own_purchase(busy, busy_population):
    rows = by_scenario(busy, "friendly_fraud")
    assert len(rows) > 20
    for t in rows:
        assert t.card_id in own_cards(busy_population, t.customer_id)
        assert t.device_id in own_devices(busy_population, t.customer_id)
        assert t.merchant_category in {CATEGORIES[c] for c in busy_population.preferred[number(t.customer_id)]}
    assert sum(t.channel == "ecommerce" for t in rows) > 0.6 * len(rows)
    # At home, unless the customer's country has no merchant of the category (as for their own shopping).
    assert sum(t.country == t.card_country for t in rows) > 0.7 * len(rows)


def test_compromised_merchant_victims_paid_at_a_busy_merchant_days_before(busy):
    first_fraud = {}
    for t in by_scenario(busy, "compromised_merchant"):
        first_fraud.setdefault(t.card_id, t.event_time)
    assert len(first_fraud) > 10
    daily = Counter((t.merchant_id, t.event_time.date()) for t in legit(busy))
    shared = Counter()
    for t in legit(busy):
        when = first_fraud.get(t.card_id)
        if (
            when
            and timedelta(0) < when - t.event_time <= timedelta(days=5)
            and daily[(t.merchant_id, t.event_time.date())] >= 5
        ):
            shared[t.card_id, t.merchant_id] += 1
    victims_with_a_point_of_purchase = {card for card, _ in shared}
    assert victims_with_a_point_of_purchase == set(first_fraud)
    by_merchant = Counter(merchant for _, merchant in shared)
    assert by_merchant.most_common(1)[0][1] >= 3  # one breach, several victims
    assert all(
        t.device_id.startswith("dev-x-") and t.country != t.card_country
        for t in by_scenario(busy, "compromised_merchant")
    )


# ------------------------------------------------------------------------------------ files


DRIFTING = SimulationConfig(
    seed=11,
    days=6,
    n_customers=1500,
    scenarios=BUSY,
    changes=(
        CovariateChange(
            name="surge",
            start_day=2,
            end_day=4,
            amount_factor=1.5,
            volume_factor=1.3,
            category_boost={"crypto": 0.1, "travel": 0.05},
            new_device_share=0.2,
            ecommerce_share=0.7,
        ),
        ConceptChange(
            name="ato-native",
            start_day=2,
            scenario="account_takeover",
            signature=FraudSignature(abroad=False, categories=("crypto", "grocery")),
        ),
        NewPatternChange(name="wave", start_day=3, scenario="bust_out", rate=20),
    ),
)


@pytest.fixture(scope="module")
def drifting():
    return simulate(DRIFTING)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_files_hold_exactly_what_simulate_returns(drifting, tmp_path, fmt):
    summary = simulate_to_files(DRIFTING, tmp_path, fmt)
    assert {p.split("/")[-1] for p in summary["files"].values()} == {
        f"{k}.{fmt}" for k in ("transactions", "labels", "truth")
    }
    back = read_simulation(tmp_path)
    assert back.transactions == drifting.transactions
    assert back.labels == drifting.labels and back.truth == drifting.truth
    assert {k: summary[k] for k in drifting.summary()} == drifting.summary()
    assert list(iter_transactions(tmp_path, batch_rows=1000)) == drifting.transactions


def test_jsonl_lines_are_what_msgspec_writes_and_decode_to_the_parquet_rows(drifting, tmp_path):
    simulate_to_files(DRIFTING, tmp_path / "j", "jsonl")
    simulate_to_files(DRIFTING, tmp_path / "p", "parquet")
    from_parquet = read_simulation(tmp_path / "p")
    lines = (tmp_path / "j" / "transactions.jsonl").read_bytes().splitlines()
    assert [decode_transaction(line) for line in lines] == from_parquet.transactions
    assert lines == [encode(t) for t in from_parquet.transactions]
    for kind, items in (("labels", from_parquet.labels), ("truth", from_parquet.truth)):
        assert (tmp_path / "j" / f"{kind}.jsonl").read_bytes() == b"".join(encode(x) + b"\n" for x in items)


def test_writing_one_format_removes_the_other(sim, tmp_path):
    simulate_to_files(SimulationConfig(days=1, n_customers=200), tmp_path, "parquet")
    write_simulation(sim, tmp_path)
    assert not list(tmp_path.glob("*.parquet"))
    back = read_simulation(tmp_path)
    assert back.transactions == sim.transactions and back.labels == sim.labels and back.truth == sim.truth


def test_progress_is_reported_per_day(tmp_path):
    seen = []
    summary = simulate_to_files(SimulationConfig(days=3, n_customers=300), tmp_path, "parquet", progress=seen.append)
    assert [d.day for d in seen] == [0, 1, 2] and seen[-1].transactions == summary["transactions"]
    assert summary["rows_per_s"] > 0


def test_reading_an_empty_directory_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="fraud simulate"):
        read_simulation(tmp_path)


# ------------------------------------------------------------------------------------ config


def test_a_scenario_file_with_overrides(tmp_path):
    path = tmp_path / "drift.yaml"
    path.write_text(
        "simulation:\n  days: 9\n  n_customers: 500\n  scenarios: {bust_out: 0}\n  changes:\n"
        "    - {name: holiday, kind: covariate, start_day: 3, amount_factor: 1.5}\n"
        "story: {ignored: here}\n"
    )
    config = load_config(path, days=5)
    assert config.days == 5 and config.n_customers == 500 and config.scenarios.bust_out == 0
    assert config.changes[0].name == "holiday" and config.changes[0].amount_factor == 1.5


@pytest.mark.parametrize(("field", "value"), [("days", 0), ("n_customers", -1), ("unreported_fraud_fraction", 2)])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        SimulationConfig(**{field: value})


def test_a_signature_may_only_target_categories_that_exist():
    change = ConceptChange(
        name="into-crypto", start_day=1, scenario="bust_out", signature=FraudSignature(categories=("crypto",))
    )
    with pytest.raises(ValidationError, match="into-crypto.*crypto"):
        SimulationConfig(changes=(change,))
    opening = CovariateChange(name="crypto-opens", start_day=1, category_boost={"crypto": 0.05})
    SimulationConfig(changes=(change, opening))
    with pytest.raises(ValidationError, match="lower-case"):
        CovariateChange(name="bad", start_day=1, category_boost={'crypto"shop': 0.05})
