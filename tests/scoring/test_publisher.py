"""A decision that cannot be delivered is counted, with delivery reports for failures only.

The broker is really absent here (a closed loopback port), so librdkafka gives up on the message
after its timeout and reports the failure; no mock stands in for it."""

from datetime import UTC, datetime

from deploy.embedded import free_port
from deploy.kafka import make_producer
from schema import Decision, Outcome
from scoring import DecisionPublisher, ScorerMetrics
from tests.factories import txn


def test_an_undeliverable_decision_is_counted_as_a_publish_failure():
    metrics = ScorerMetrics()
    producer = make_producer(f"127.0.0.1:{free_port()}", delivery_report_only_error=True, message_timeout_ms=300)
    publisher = DecisionPublisher(producer, "decisions", metrics)
    decision = Decision(
        transaction=txn(1),
        outcome=Outcome.APPROVE,
        score=0.01,
        model_version="m-1",
        rule_hits=[],
        features={},
        decided_at=datetime.now(UTC),
    )

    publisher.publish([decision, decision])
    publisher.flush(timeout=5)

    assert metrics.registry.get_sample_value("fraud_decision_publish_failures_total") == 2
