"""The review store's v2 behaviour on real SQLite files: exclusive claims and their expiry, verdicts
(unsure writes no label), the SLA-boosted queue order, audit sampling, the card history, the
outbox, post-authorisation cases, and the in-place migrations of v1 and v2 databases."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import msgspec
import pytest

from review_queue import CaseKind, ClaimConflict, ReviewStore, Verdict, in_audit_sample
from review_queue.store import _CASES, SCHEMA_VERSION
from schema import POST_AUTH_REVIEW_RULE, Label, LabelSource, Outcome, RuleHit, encode
from tests.factories import T0
from tests.review_queue.cases import decision


@pytest.fixture
def store(tmp_path):
    with ReviewStore(tmp_path / "review.sqlite3", claim_timeout=timedelta(minutes=15), sla=timedelta(hours=4)) as s:
        yield s


TX1, TX2, TX3 = "tx-test-000001", "tx-test-000002", "tx-test-000003"


def test_a_claimed_case_cannot_be_claimed_by_another_reviewer_until_the_claim_expires(store):
    store.add_case(decision(1))
    now = T0 + timedelta(minutes=1)
    assert store.claim(TX1, "alice", now=now).claimed_by == "alice"
    with pytest.raises(ClaimConflict, match="claimed by alice") as refused:
        store.claim(TX1, "bob", now=now + timedelta(minutes=14))
    assert refused.value.holder == "alice"
    assert store.claim(TX1, "alice", now=now + timedelta(minutes=10)).claimed_by == "alice"  # renews her own
    # Abandoned: 15 min after her last claim the case is back in the queue, and bob can take it.
    back = now + timedelta(minutes=25, seconds=1)
    (queued,) = store.open_cases(now=back)
    assert queued.transaction_id == TX1 and queued.claimed_by is None
    assert store.claim(TX1, "bob", now=back).claimed_by == "bob"
    with pytest.raises(ClaimConflict, match="claimed by bob"):
        store.claim(TX1, "alice", now=back)


def test_two_store_connections_racing_for_one_case_give_it_to_one_reviewer(tmp_path):
    path = tmp_path / "review.sqlite3"
    with ReviewStore(path) as a, ReviewStore(path) as b:
        a.add_case(decision(1))
        a.claim(TX1, "alice")
        with pytest.raises(ClaimConflict):
            b.claim(TX1, "bob")
        assert b.get_case(TX1).claimed_by == "alice"


def test_only_the_claimant_labels_a_claimed_case_and_the_label_records_who_and_when(store):
    store.add_cases([decision(1), decision(2)])
    store.claim(TX1, "alice")
    with pytest.raises(ClaimConflict):
        store.record_verdict(TX1, Verdict.FRAUD, "bob", "looks like card testing")
    with pytest.raises(ClaimConflict):  # the console requires holding the claim
        store.record_verdict(TX2, Verdict.FRAUD, "bob", require_claim=True)
    assert store.labels() == [] and store.get_case(TX1).status == "open"

    at = T0 + timedelta(hours=2)
    label = store.record_verdict(TX1, Verdict.FRAUD, "alice", "card testing burst", at=at, require_claim=True)
    assert (label.author, label.known_at, label.note, label.is_fraud) == ("alice", at, "card testing burst", True)
    assert label.merchant_id == "merch-0001"
    case = store.get_case(TX1)
    assert (case.status, case.verdict, case.reviewed_by, case.reviewed_at) == ("labelled", Verdict.FRAUD, "alice", at)
    assert case.claimed_by is None
    assert [c.transaction_id for c in store.open_cases()] == [TX2]
    with pytest.raises(ClaimConflict, match="already closed"):
        store.claim(TX1, "bob")


def test_unsure_closes_the_case_with_who_when_and_note_but_writes_no_label(store):
    store.add_case(decision(1))
    store.claim(TX1, "alice")
    assert store.record_verdict(TX1, Verdict.UNSURE, "alice", "cardholder unreachable", require_claim=True) is None
    case = store.get_case(TX1)
    assert (case.status, case.verdict, case.reviewed_by, case.review_note) == (
        "unsure",
        Verdict.UNSURE,
        "alice",
        "cardholder unreachable",
    )
    assert case.reviewed_at is not None
    assert store.labels() == [] and store.resolved_labels() == {} and store.open_cases() == []


def test_queue_order_is_priority_boosted_by_age_against_the_sla(store):
    # Same score; TX2 is three times the money, but TX1 has waited 9 hours (2.25 SLAs) longer.
    store.add_cases([decision(1, 0.8, 10_000, seconds=0), decision(2, 0.8, 30_000, seconds=9 * 3600)])
    just_after = T0 + timedelta(hours=9)
    assert [c.transaction_id for c in store.open_cases(now=just_after)] == [TX1, TX2]  # 1 x 3.25 vs 3 x 1
    assert [c.transaction_id for c in store.open_cases(now=just_after - timedelta(hours=2))] == [TX2, TX1]
    much_later = T0 + timedelta(days=10)  # both long overdue: the larger amount leads again
    assert [c.transaction_id for c in store.open_cases(now=much_later)] == [TX2, TX1]


def test_audit_sample_is_stable_near_its_rate_and_recorded_on_the_case(store):
    ids = [f"tx-{i:07d}" for i in range(100_000)]
    sampled = [t for t in ids if in_audit_sample(t, 0.002)]
    assert 140 <= len(sampled) <= 260  # 200 expected; binomial sd ~14
    assert sampled == [t for t in ids if in_audit_sample(t, 0.002)]  # redelivery samples the same set
    assert not any(in_audit_sample(t, 0.0) for t in ids[:1000])
    assert set(sampled) <= {t for t in ids if in_audit_sample(t, 0.01)}  # a larger rate extends the sample

    approved = decision(3, score=0.02, outcome=Outcome.APPROVE)
    assert store.add_audit_cases([approved], sample_rate=0.002) == 1
    assert store.add_audit_cases([approved], sample_rate=0.002) == 0
    with pytest.raises(ValueError, match="approved"):
        store.add_audit_cases([decision(4)], sample_rate=0.002)
    (case,) = store.open_cases()
    assert (case.kind, case.sample_rate, case.priority) == (CaseKind.AUDIT, 0.002, 0.5 * 10_000)
    assert store.add_case(decision(1)) and store.get_case(TX1).kind is CaseKind.FLAGGED


def test_card_history_is_per_card_newest_first_and_pruned_to_the_window(store):
    old = decision(1, outcome=Outcome.APPROVE, seconds=0)
    other_card = decision(2, card="card-000002", seconds=3600)
    recent = [decision(10 + i, outcome=Outcome.APPROVE, seconds=8 * 86400 + i) for i in range(3)]
    store.record_payments([old, other_card], keep=timedelta(days=7))
    assert [p.transaction_id for p in store.card_history("card-000001")] == [TX1]
    store.record_payments(recent, keep=timedelta(days=7))  # the newest is now 8 days after `old`
    history = store.card_history("card-000001", limit=2)
    assert [p.transaction_id for p in history] == ["tx-test-000012", "tx-test-000011"]
    assert (history[0].outcome, history[0].score, history[0].amount_minor) == (Outcome.APPROVE, 0.8, 10_000)
    assert [p.transaction_id for p in store.card_history("card-000001")] == [f"tx-test-00001{i}" for i in (2, 1, 0)]
    assert store.card_history("card-000002") == []  # older than 7 days before the newest payment


def test_review_labels_wait_in_the_outbox_until_marked_published_chargebacks_do_not(store):
    store.add_cases([decision(1), decision(2)])
    store.record_label(TX1, True, "alice")
    store.record_verdict(TX2, Verdict.UNSURE, "alice")
    chargeback = Label(
        transaction_id=TX2, is_fraud=True, source=LabelSource.CHARGEBACK, known_at=T0 + timedelta(days=3), author="x"
    )
    store.record_external_label(chargeback)
    pending = store.unpublished_labels()
    assert [(lb.transaction_id, lb.source) for _, lb in pending] == [(TX1, LabelSource.REVIEW)]
    store.mark_published([i for i, _ in pending])
    assert store.unpublished_labels() == []
    assert store.resolved_labels() == {TX1: True, TX2: True}  # the chargeback labels what unsure left open
    assert store.counts()["labels_unpublished"] == 0 and store.counts()["unsure"] == 1


V1_SCHEMA = """
CREATE TABLE cases (
    transaction_id TEXT PRIMARY KEY, decision_json TEXT NOT NULL, score REAL, amount_minor INTEGER NOT NULL,
    priority REAL NOT NULL, model_version TEXT NOT NULL, created_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'labelled'))
);
CREATE INDEX cases_open ON cases (status, priority DESC, created_at);
CREATE TABLE labels (
    id INTEGER PRIMARY KEY, transaction_id TEXT NOT NULL, is_fraud INTEGER NOT NULL, source TEXT NOT NULL,
    author TEXT NOT NULL, note TEXT NOT NULL, known_at TEXT NOT NULL, UNIQUE (transaction_id, source, author)
);
PRAGMA user_version=1;
"""


def test_a_v1_database_is_migrated_in_place(tmp_path):
    path = tmp_path / "review.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    for d, status in [(decision(1), "labelled"), (decision(2, amount_minor=50_000), "open")]:
        row = (d.transaction_id, encode(d).decode(), d.score, d.transaction.amount_minor)
        db.execute(
            "INSERT INTO cases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*row, d.score * d.transaction.amount_minor, "xgb-0001", d.decided_at.isoformat(), status),
        )
    db.execute(
        "INSERT INTO labels (transaction_id, is_fraud, source, author, note, known_at) VALUES (?, 1, 'review', "
        "'alice', 'v1 label', ?)",
        (TX1, (T0 + timedelta(hours=1)).isoformat()),
    )
    db.commit()
    db.close()

    with ReviewStore(path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        (open_case,) = store.open_cases()
        assert (open_case.transaction_id, open_case.kind, open_case.sample_rate) == (TX2, CaseKind.FLAGGED, 1.0)
        assert open_case.decision == decision(2, amount_minor=50_000)
        done = store.get_case(TX1)
        assert (done.status, done.verdict, done.reviewed_by, done.review_note) == (
            "labelled",
            Verdict.FRAUD,
            "alice",
            "v1 label",
        )
        assert store.unpublished_labels() == []  # v1 published every label it committed
        assert [(lb.transaction_id, lb.author) for lb in store.labels()] == [(TX1, "alice")]
        store.claim(TX2, "bob")  # the new columns work
        store.record_payments([decision(2)])
    with ReviewStore(path) as reopened:  # and the migration does not run twice
        assert reopened.get_case(TX2).claimed_by == "bob"
        assert len(reopened.card_history("card-000001")) == 1


def fail_open(n: int):
    """A payment approved without features under the fail-open budget (scoring/fallback.py)."""
    d = decision(n, outcome=Outcome.APPROVE)
    hit = RuleHit(rule_id=POST_AUTH_REVIEW_RULE, action=Outcome.APPROVE, reason="approved without features")
    return msgspec.structs.replace(d, rule_hits=[hit], degraded_reason="features_unavailable: circuit open")


def test_intake_opens_a_post_auth_case_for_each_fail_open_approval_and_never_an_audit_case(store):
    opened = store.intake([fail_open(1), decision(2, outcome=Outcome.APPROVE), decision(3)], audit_rate=1.0)
    assert opened == 3
    kinds = {c.transaction_id: c.kind for c in store.open_cases()}
    assert kinds == {TX1: CaseKind.POST_AUTH, TX2: CaseKind.AUDIT, TX3: CaseKind.FLAGGED}
    assert store.get_case(TX1).priority == 0.5 * 10_000  # ranked like an audit case: risk unknown, not low
    with pytest.raises(ValueError, match="fail-open"):
        store.add_post_auth_cases([decision(4, outcome=Outcome.APPROVE)])


def test_a_v2_database_is_migrated_to_take_post_auth_cases(tmp_path):
    path = tmp_path / "review.sqlite3"
    with ReviewStore(path) as store:
        store.add_case(decision(1))
        store.add_audit_cases([decision(2, outcome=Outcome.APPROVE)], sample_rate=0.002)
    db = sqlite3.connect(path)  # put the v2 table back: the same columns, the old CHECK on kind
    v2_cases = _CASES.replace("'flagged', 'audit', 'post_auth'", "'flagged', 'audit'")
    db.executescript(
        "ALTER TABLE cases RENAME TO c3; DROP INDEX cases_open;"
        + v2_cases
        + "INSERT INTO cases SELECT * FROM c3; DROP TABLE c3; PRAGMA user_version=2;"
    )
    db.close()
    with ReviewStore(path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == 3
        assert {c.transaction_id: c.kind for c in store.open_cases()} == {TX1: CaseKind.FLAGGED, TX2: CaseKind.AUDIT}
        assert store.get_case(TX2).sample_rate == 0.002
        assert store.add_post_auth_cases([fail_open(3)]) == 1
