"""The review store on real SQLite files: idempotent intake, priority, durable labels, conflicts."""

from datetime import UTC, datetime, timedelta

import pytest

from review_queue import ReviewStore
from schema import Decision, Label, LabelSource, Outcome, RuleHit, resolve_labels
from tests.factories import T0, txn


def decision(n: int, score: float = 0.8, amount_minor: int = 10_000, outcome: Outcome = Outcome.FLAG) -> Decision:
    return Decision(
        transaction=txn(n, amount_minor=amount_minor),
        outcome=outcome,
        score=score,
        model_version="xgb-0001",
        rule_hits=[RuleHit(rule_id="velocity_card_10m@1", action=Outcome.FLAG, reason="9 transactions in 10m")],
        features={"amount": amount_minor / 100},
        decided_at=T0 + timedelta(seconds=n),
    )


@pytest.fixture
def store(tmp_path):
    with ReviewStore(tmp_path / "review.sqlite3") as s:
        yield s


def test_flagged_decision_opens_one_case_even_if_delivered_twice(store):
    assert store.add_case(decision(1)) is True
    assert store.add_case(decision(1)) is False
    (case,) = store.open_cases()
    assert case.transaction_id == "tx-test-000001" and case.decision == decision(1)


def test_only_flagged_decisions_are_accepted(store):
    with pytest.raises(ValueError, match="block"):
        store.add_case(decision(1, outcome=Outcome.BLOCK))
    assert store.open_cases() == []


def test_cases_are_ordered_by_score_times_amount(store):
    assert store.add_cases([decision(1, 0.75, 1000), decision(2, 0.72, 90_000), decision(3, 0.95, 5000)]) == 3
    assert [c.transaction_id[-1] for c in store.open_cases()] == ["2", "3", "1"]


def test_labelling_closes_the_case_and_survives_a_restart(tmp_path):
    path = tmp_path / "review.sqlite3"
    with ReviewStore(path) as store:
        store.add_cases([decision(1), decision(2)])
        label = store.record_label("tx-test-000001", True, "alice", "card testing pattern")
        assert label.source is LabelSource.REVIEW and label.author == "alice"
    with ReviewStore(path) as reopened:
        assert [c.transaction_id for c in reopened.open_cases()] == ["tx-test-000002"]
        assert reopened.get_case("tx-test-000001").status == "labelled"
        (stored,) = reopened.labels()
        assert (stored.transaction_id, stored.is_fraud, stored.note) == ("tx-test-000001", True, "card testing pattern")


def test_label_for_an_unknown_case_is_refused(store):
    with pytest.raises(KeyError, match="tx-nope"):
        store.record_label("tx-nope", True, "alice")
    store.add_case(decision(1))
    with pytest.raises(ValueError, match="reviewer"):
        store.record_label("tx-test-000001", True, " ")
    assert store.get_case("tx-test-000001").status == "open"
    assert store.labels() == []


def test_cut_off_excludes_labels_not_yet_known(store):
    store.add_cases([decision(1), decision(2)])
    store.record_label("tx-test-000001", True, "alice", at=T0 + timedelta(days=1))
    store.record_label("tx-test-000002", False, "bob", at=T0 + timedelta(days=3))
    assert [lb.transaction_id for lb in store.labels(known_before=T0 + timedelta(days=2))] == ["tx-test-000001"]


def test_chargeback_overrides_review_and_latest_review_wins(store):
    store.add_cases([decision(1), decision(2)])
    store.record_label("tx-test-000001", False, "alice", at=T0 + timedelta(hours=1))
    store.record_label("tx-test-000002", False, "alice", at=T0 + timedelta(hours=1))
    chargeback = Label(
        transaction_id="tx-test-000001",
        is_fraud=True,
        source=LabelSource.CHARGEBACK,
        known_at=T0 + timedelta(days=9),
        author="issuer",
    )
    assert store.record_external_label(chargeback) is True
    assert store.record_external_label(chargeback) is False  # idempotent
    later_review = Label(
        transaction_id="tx-test-000002",
        is_fraud=True,
        source=LabelSource.REVIEW,
        known_at=T0 + timedelta(hours=5),
        author="senior",
    )
    store.record_external_label(later_review)
    assert store.resolved_labels() == {"tx-test-000001": True, "tx-test-000002": True}
    assert store.resolved_labels(known_before=T0 + timedelta(hours=2)) == {
        "tx-test-000001": False,
        "tx-test-000002": False,
    }


def test_resolution_rule_is_order_independent():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    review = Label(
        transaction_id="t", is_fraud=False, source=LabelSource.REVIEW, known_at=at + timedelta(days=5), author="a"
    )
    chargeback = Label(transaction_id="t", is_fraud=True, source=LabelSource.CHARGEBACK, known_at=at, author="issuer")
    assert resolve_labels([review, chargeback]) == resolve_labels([chargeback, review]) == {"t": True}
