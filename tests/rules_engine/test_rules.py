import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules_engine import RuleFileError, load_rules
from schema import Outcome
from tests.factories import txn

RULES = """
version: 1
rules:
  - {id: blocked_country@1, kind: blocked_country, action: block, countries: [KP, IR]}
  - {id: amount_ceiling@1, kind: amount_ceiling, action: block, max_amount_minor: {EUR: 100000}}
  - {id: velocity_card_10m@1, kind: velocity, action: flag, window: 10m, max_transactions: 5}
"""


@pytest.fixture
def rules(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return load_rules(path)


def test_ordinary_transaction_hits_nothing(rules):
    assert rules.evaluate(txn(), {"card_txn_count_10m": 1.0}) == []


def test_blocked_country_blocks_with_reason(rules):
    (hit,) = rules.evaluate(txn(country="KP"), {"card_txn_count_10m": 1.0})
    assert (hit.rule_id, hit.action) == ("blocked_country@1", Outcome.BLOCK)
    assert "KP" in hit.reason


def test_amount_ceiling_is_exclusive_of_the_limit(rules):
    assert rules.evaluate(txn(amount_minor=100000), {"card_txn_count_10m": 1.0}) == []
    (hit,) = rules.evaluate(txn(amount_minor=100001), {"card_txn_count_10m": 1.0})
    assert hit.rule_id == "amount_ceiling@1" and "1,000.00 EUR" in hit.reason


def test_amount_ceiling_in_unconfigured_currency_is_not_evaluated(rules):
    (hit,) = rules.evaluate(txn(currency="JPY"), {"card_txn_count_10m": 1.0})
    assert hit.evaluated is False and hit.action is Outcome.APPROVE and "JPY" in hit.reason


def test_velocity_fires_above_the_limit_only(rules):
    assert rules.evaluate(txn(), {"card_txn_count_10m": 5.0}) == []
    (hit,) = rules.evaluate(txn(), {"card_txn_count_10m": 6.0})
    assert hit.action is Outcome.FLAG and "6 transactions" in hit.reason


def test_velocity_without_its_feature_says_not_evaluated(rules):
    (hit,) = rules.evaluate(txn(), {})
    assert hit.evaluated is False and "card_txn_count_10m" in hit.reason


def test_shipped_rules_load():
    rules = load_rules()
    assert {r.id for r in rules.rules} >= {"blocked_country@1", "velocity_card_10m@1"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nrules:\n - {id: v@1, kind: velocity, action: flag, window: 7m, max_transactions: 3}", "7m"),
        ("version: 1\nrules:\n - {id: x@1, kind: blocked_country, action: block, countries: [de]}", "alpha-2"),
        ("version: 1\nrules:\n - {id: x@1, kind: teleport, action: block}", "kind"),
        ("version: 1\nrules:\n - {id: x@1, kind: blocked_country, action: block, countries: [KP], typo: 1}", "typo"),
        ("version: 1\nrules:\n - {id: NoVersion, kind: blocked_country, action: block, countries: [KP]}", "id"),
        (
            "version: 1\nrules:\n - {id: a@1, kind: blocked_country, action: block, countries: [KP]}\n"
            " - {id: a@1, kind: blocked_country, action: flag, countries: [IR]}",
            "duplicate",
        ),
    ],
)
def test_bad_rule_files_are_refused_naming_the_problem(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RuleFileError, match=expected):
        load_rules(path)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.booleans())
def test_a_batch_gets_exactly_the_hits_of_rule_by_rule_evaluation(seed, counts_known):
    """``evaluate_batch`` skips payments a rule cannot fire for; that must never change a hit."""
    rules = load_rules(None)  # the shipped rules: every kind, several thresholds
    rng = random.Random(seed)
    batch = [
        txn(
            n,
            amount_minor=rng.choice([100, 299_999, 300_000, 300_001, 1_000_000, 1_000_001, 5_000_000]),
            country=rng.choice(["DE", "KP", "FR", "IR"]),
            currency=rng.choice(["EUR", "USD", "GBP", "JPY"]),  # JPY has no ceiling: not evaluated
        )
        for n in range(rng.randint(1, 30))
    ]
    vectors = [
        {"card_txn_count_10m": float(rng.randint(1, 12)), "card_txn_count_1h": float(rng.randint(1, 40))}
        if counts_known
        else {}
        for _ in batch
    ]

    def column(name):
        return np.array([v[name] for v in vectors]) if counts_known else None

    expected = [rules.evaluate(t, v) for t, v in zip(batch, vectors, strict=True)]
    assert rules.evaluate_batch(batch, vectors, column) == expected
