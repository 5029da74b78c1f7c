"""The review queue against the real broker: intake opens flagged and audit cases and keeps the card
history, chargebacks on `labels` enter the store's label log (review labels are not re-recorded),
and a label committed while the broker is away waits in the outbox until the next publish."""

from __future__ import annotations

from datetime import timedelta

import pytest

from deploy import free_port, make_producer, produce_all, read_topic
from fraud.config import Settings
from fraud.lifecycle import (
    intake_decisions,
    intake_labels,
    load_labels,
    open_review_store,
    publish_pending_labels,
    record_review_verdict,
)
from review_queue import CaseKind, Verdict, in_audit_sample
from schema import Label, LabelSource, Outcome, decode_label, encode
from tests.factories import T0
from tests.review_queue.cases import decision

pytestmark = pytest.mark.integration


def settings_for(tmp_path, kafka_bootstrap: str, topics, **overrides: object) -> Settings:
    return Settings(
        home=tmp_path, kafka_bootstrap=kafka_bootstrap, topic_suffix=topics.labels.removeprefix("labels"), **overrides
    )


def label(tx: str, source: LabelSource, author: str, is_fraud: bool = True) -> Label:
    return Label(transaction_id=tx, is_fraud=is_fraud, source=source, known_at=T0 + timedelta(days=3), author=author)


def test_a_label_saved_while_the_broker_is_away_is_published_by_the_next_try(tmp_path, kafka_bootstrap, topics):
    away = settings_for(tmp_path, f"127.0.0.1:{free_port()}", topics, label_publish_timeout_s=1.0)
    with open_review_store(away) as store:
        store.add_cases([decision(1), decision(2)])
    first = record_review_verdict(away, "tx-test-000001", Verdict.FRAUD, "alice", "burst")
    assert first.published is False and first.label.author == "alice"
    with open_review_store(away) as store:  # committed all the same
        assert [lb.transaction_id for _, lb in store.unpublished_labels()] == ["tx-test-000001"]

    back = settings_for(tmp_path, kafka_bootstrap, topics)
    second = record_review_verdict(back, "tx-test-000002", Verdict.LEGITIMATE, "bob", "")
    assert second.published is True
    assert publish_pending_labels(back) == 0
    published = [decode_label(m.value()) for m in read_topic(kafka_bootstrap, topics.labels)]
    assert [(lb.transaction_id, lb.author, lb.is_fraud) for lb in published] == [
        ("tx-test-000001", "alice", True),
        ("tx-test-000002", "bob", False),
    ]  # each once, oldest first
    assert published[0].merchant_id == "merch-0001"


def test_intake_opens_flagged_and_audit_cases_keeps_history_and_records_chargebacks(tmp_path, kafka_bootstrap, topics):
    settings = settings_for(tmp_path, kafka_bootstrap, topics, review_audit_rate=0.5)
    approved = [decision(10 + i, score=0.05, outcome=Outcome.APPROVE) for i in range(12)]
    decisions = [decision(1), decision(2, outcome=Outcome.BLOCK, score=0.97), *approved]
    producer = make_producer(kafka_bootstrap)
    produce_all(producer, topics.decisions, [(d.transaction_id.encode(), encode(d)) for d in decisions])
    chargeback = label("tx-test-000010", LabelSource.CHARGEBACK, "issuer")
    review = label("tx-test-000001", LabelSource.REVIEW, "alice")  # published by some store's outbox
    produce_all(producer, topics.labels, [(lb.transaction_id.encode(), encode(lb)) for lb in (chargeback, review)])

    sampled = {d.transaction_id for d in approved if in_audit_sample(d.transaction_id, 0.5)}
    assert 0 < len(sampled) < len(approved)
    assert intake_decisions(settings, idle_s=0.5) == 1 + len(sampled)
    assert intake_labels(settings, idle_s=0.5) == 1

    with open_review_store(settings) as store:
        cases = store.open_cases(100)
        assert {c.transaction_id for c in cases if c.kind is CaseKind.FLAGGED} == {"tx-test-000001"}
        audit = [c for c in cases if c.kind is CaseKind.AUDIT]
        assert {c.transaction_id for c in audit} == sampled and {c.sample_rate for c in audit} == {0.5}
        assert len(store.card_history("card-000001", limit=100)) == len(decisions)  # every outcome, blocked too
        assert [(lb.transaction_id, lb.source) for lb in store.labels()] == [("tx-test-000010", LabelSource.CHARGEBACK)]
        assert store.unpublished_labels() == []  # a chargeback read from the topic is not sent back

    # Retraining reads the simulator's chargebacks and the store: the chargeback in both counts once.
    assert load_labels([chargeback], settings.review_db) == [chargeback]
