"""The review queue's durable store (SQLite): cases, exclusive claims, verdicts, the label log.

Durability: WAL with ``synchronous=FULL``, and every write in one transaction, so when a call
returns the label is on disk and a crash leaves no half-written case. Cases are keyed by
transaction id, so a decision delivered twice opens one case. Conflicting labels for one
transaction resolve by ``schema.resolve_labels``: a chargeback beats a review, the latest review
beats earlier ones. A later issue can put PostgreSQL behind the same methods.

Cases come in three kinds: ``flagged`` (the model or a rule asked for review), ``audit`` (a
small random sample of approved payments, so that review labels are not only about what the
model already suspected; the case records the probability it was sampled with, for
inverse-propensity weighting in evaluation), and ``post_auth`` (payments approved without
features under the fail-open budget while Redis was away, checked after the fact; see
docs/reliability.md). See docs/feedback-loop.md.

Queue order: ``priority × (1 + age / SLA)``, where ``priority`` is score × amount (minor units)
for a flagged case and 0.5 × amount for an audit case, and ``age`` is the time since the
decision. A case waiting one SLA counts double, two SLAs triple, so small cases cannot starve
behind a stream of large ones. Audit cases are ranked as if scored 0.5: their worth is in being
labelled at all, and ranking them by their (low) scores would leave them at the bottom forever,
which would bring back the very bias they exist to remove.

Claims: a reviewer claims a case before labelling it in the console. A claim is one UPDATE in
one transaction that succeeds only if the case is open and unclaimed, claimed by the same
reviewer, or its claim has expired, so two reviewers never hold the same case. A claim expires
after ``claim_timeout`` (default 15 min): an abandoned case goes back to the queue by itself.
Only the current claimant may label a claimed case.

Verdicts: fraud and legitimate write a label; unsure closes the case with who, when and the note
but writes no label, because a guess would poison training and the chargeback (or its absence)
will label the payment anyway.

The label log doubles as the outbox of the ``labels`` topic: a reviewer's label is committed with
``published = 0`` and marked once the broker has acknowledged it, so a label committed while the
broker was away is published by the next label or intake.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from schema import POST_AUTH_REVIEW_RULE, Decision, Label, LabelSource, Outcome, decode_decision, encode, resolve_labels

SCHEMA_VERSION = 3

DEFAULT_CLAIM_TIMEOUT = timedelta(minutes=15)
DEFAULT_SLA = timedelta(hours=4)
DEFAULT_HISTORY = timedelta(days=7)
# What an audit case's amount is weighted by in the queue, in place of its score (module docstring).
AUDIT_PRIORITY_SCORE = 0.5

_CASES = """
CREATE TABLE cases (
    transaction_id   TEXT PRIMARY KEY,
    decision_json    TEXT NOT NULL,
    score            REAL,
    amount_minor     INTEGER NOT NULL,
    priority         REAL NOT NULL,
    model_version    TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('open', 'labelled', 'unsure')),
    kind             TEXT NOT NULL DEFAULT 'flagged' CHECK (kind IN ('flagged', 'audit', 'post_auth')),
    sample_rate      REAL NOT NULL DEFAULT 1.0,
    created_ts       REAL NOT NULL,
    claimed_by       TEXT,
    claim_expires_ts REAL,
    verdict          TEXT CHECK (verdict IN ('fraud', 'legitimate', 'unsure')),
    reviewed_by      TEXT,
    reviewed_at      TEXT,
    review_note      TEXT
);
CREATE INDEX cases_open ON cases (status, priority DESC, created_at);
"""
_LABELS = """
CREATE TABLE labels (
    id             INTEGER PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    is_fraud       INTEGER NOT NULL,
    source         TEXT NOT NULL,
    author         TEXT NOT NULL,
    note           TEXT NOT NULL,
    known_at       TEXT NOT NULL,
    published      INTEGER NOT NULL DEFAULT 1,
    merchant_id    TEXT,
    UNIQUE (transaction_id, source, author)
);
"""
_V2_ONLY = """
CREATE INDEX labels_unpublished ON labels (id) WHERE published = 0;
CREATE TABLE card_payments (
    transaction_id TEXT PRIMARY KEY,
    card_id        TEXT NOT NULL,
    event_ts       REAL NOT NULL,
    decision_json  TEXT NOT NULL
);
CREATE INDEX card_payments_card ON card_payments (card_id, event_ts DESC);
CREATE INDEX card_payments_time ON card_payments (event_ts);
"""

_CASE_COLUMNS = (
    "transaction_id, decision_json, priority, status, created_at, kind, sample_rate, claimed_by, "
    "claim_expires_ts, verdict, reviewed_by, reviewed_at, review_note"
)


class Verdict(StrEnum):
    FRAUD = "fraud"
    LEGITIMATE = "legitimate"
    UNSURE = "unsure"  # recorded on the case, never a training label


class CaseKind(StrEnum):
    FLAGGED = "flagged"  # the decision path flagged the payment for review
    AUDIT = "audit"  # an approved payment drawn at random, against selection bias
    POST_AUTH = "post_auth"  # approved without features under the fail-open budget: check it after the fact


class ClaimConflict(RuntimeError):
    """The case is claimed by another reviewer (or is no longer open)."""

    def __init__(self, transaction_id: str, holder: str | None, status: str) -> None:
        self.holder = holder
        self.status = status
        why = f"claimed by {holder}" if status == "open" else f"already closed ({status})"
        super().__init__(f"case {transaction_id} is {why}")


@dataclass(frozen=True)
class ReviewCase:
    transaction_id: str
    decision: Decision
    priority: float
    status: str
    created_at: datetime
    kind: CaseKind = CaseKind.FLAGGED
    sample_rate: float = 1.0  # probability this payment was sent to review given its decision
    claimed_by: str | None = None  # None when unclaimed or the claim has expired
    claim_expires_at: datetime | None = None
    verdict: Verdict | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    review_note: str | None = None

    def age(self, now: datetime) -> timedelta:
        return now - self.created_at


@dataclass(frozen=True)
class CardPayment:
    """One of a card's recent payments as the decision path saw it (for the case page)."""

    transaction_id: str
    event_time: datetime
    amount_minor: int
    currency: str
    merchant_id: str
    country: str
    outcome: Outcome
    score: float | None


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def needs_post_auth_review(decision: Decision) -> bool:
    """Approved by the fallback ladder's fail-open rung, so reviewed after authorisation."""
    return decision.outcome is Outcome.APPROVE and any(h.rule_id == POST_AUTH_REVIEW_RULE for h in decision.rule_hits)


def in_audit_sample(transaction_id: str, rate: float) -> bool:
    """Whether an approved payment belongs to the audit sample drawn at ``rate``.

    A stable hash of the transaction id, not a random draw, so a redelivered decision is sampled
    the same way and intake stays idempotent; blake2b so the choice does not follow any pattern
    in how ids are issued."""
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(transaction_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


class ReviewStore:
    def __init__(
        self, path: Path, claim_timeout: timedelta = DEFAULT_CLAIM_TIMEOUT, sla: timedelta = DEFAULT_SLA
    ) -> None:
        if claim_timeout <= timedelta(0) or sla <= timedelta(0):
            raise ValueError("claim_timeout and sla must be positive")
        self.claim_timeout = claim_timeout
        self.sla = sla
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)  # explicit transactions only
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        with self._tx():  # BEGIN IMMEDIATE: two processes opening one old file migrate it once
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._script(_CASES + _LABELS + _V2_ONLY)
            elif version == 1:
                self._migrate_v1()  # straight to the current ``cases`` table
            elif version == 2:
                self._migrate_v2()
            elif version != SCHEMA_VERSION:
                raise RuntimeError(f"{path}: review store schema {version}, this code knows {SCHEMA_VERSION}")
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _script(self, sql: str) -> None:
        # executescript() commits first, which would break the surrounding transaction: one by one.
        for statement in sql.split(";"):
            if statement.strip():
                self.db.execute(statement)

    def _migrate_v1(self) -> None:
        """v1 -> v2 in place, inside the caller's transaction: kinds, claims, verdicts, outbox, history.

        SQLite cannot change a CHECK constraint, so ``cases`` is rebuilt and copied; v1 cases are
        all flagged. Labelled cases get their verdict back from their latest review label. v1
        labels count as published: v1 published each label right after committing it."""
        self.db.execute("ALTER TABLE cases RENAME TO cases_v1")
        self.db.execute("DROP INDEX IF EXISTS cases_open")
        self._script(_CASES)
        rows = self.db.execute(
            "SELECT transaction_id, decision_json, score, amount_minor, priority, model_version, created_at, status "
            "FROM cases_v1"
        ).fetchall()
        self.db.executemany(
            "INSERT INTO cases (transaction_id, decision_json, score, amount_minor, priority, model_version, "
            "created_at, status, created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*row, datetime.fromisoformat(row[6]).timestamp()) for row in rows],
        )
        self.db.execute("DROP TABLE cases_v1")
        self.db.execute("ALTER TABLE labels ADD COLUMN published INTEGER NOT NULL DEFAULT 1")
        self.db.execute("ALTER TABLE labels ADD COLUMN merchant_id TEXT")
        reviewed = self.db.execute(
            "SELECT transaction_id, is_fraud, author, known_at, note FROM labels WHERE source = ? "
            "ORDER BY known_at, id",
            (LabelSource.REVIEW.value,),
        ).fetchall()
        for tx, is_fraud, author, known_at, note in reviewed:  # the latest review is applied last
            verdict = Verdict.FRAUD if is_fraud else Verdict.LEGITIMATE
            self.db.execute(
                "UPDATE cases SET verdict = ?, reviewed_by = ?, reviewed_at = ?, review_note = ? "
                "WHERE transaction_id = ? AND status = 'labelled'",
                (verdict.value, author, known_at, note, tx),
            )
        self._script(_V2_ONLY)

    def _migrate_v2(self) -> None:
        """v2 -> v3 in place: the ``post_auth`` case kind. SQLite cannot change a CHECK, so
        ``cases`` is rebuilt and every row copied as it is."""
        self.db.execute("ALTER TABLE cases RENAME TO cases_v2")
        self.db.execute("DROP INDEX IF EXISTS cases_open")
        self._script(_CASES)
        self.db.execute("INSERT INTO cases SELECT * FROM cases_v2")
        self.db.execute("DROP TABLE cases_v2")

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- intake ---------------------------------------------------------------------------------

    def add_case(self, decision: Decision) -> bool:
        """Open a case for a flagged decision; False if one exists already (duplicate delivery)."""
        return self.add_cases([decision]) == 1

    def add_cases(self, decisions: Iterable[Decision]) -> int:
        """Open cases for flagged decisions in one transaction; returns how many were new."""
        rows = []
        for d in decisions:
            if d.outcome is not Outcome.FLAG:
                raise ValueError(f"only flagged decisions are reviewed; {d.transaction_id} is {d.outcome.value}")
            rows.append(self._case_row(d, CaseKind.FLAGGED, 1.0, (d.score or 1.0)))
        return self._insert_cases(rows)

    def add_audit_cases(self, decisions: Iterable[Decision], sample_rate: float) -> int:
        """Open audit cases for approved decisions drawn at ``sample_rate``; returns how many were new.

        The caller chooses the sample (``in_audit_sample``); the rate is recorded on each case so an
        evaluation can weight its label by 1 / rate."""
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        rows = []
        for d in decisions:
            if d.outcome is not Outcome.APPROVE:
                raise ValueError(f"audit cases sample approved payments; {d.transaction_id} is {d.outcome.value}")
            rows.append(self._case_row(d, CaseKind.AUDIT, sample_rate, AUDIT_PRIORITY_SCORE))
        return self._insert_cases(rows)

    def add_post_auth_cases(self, decisions: Iterable[Decision]) -> int:
        """Open cases for payments approved without features (the fallback ladder's fail-open rung,
        ``POST_AUTH_REVIEW_RULE``): the money has gone, a reviewer checks it after the fact.
        Ranked like audit cases (as if scored 0.5): their risk is unknown, not low."""
        rows = []
        for d in decisions:
            if not needs_post_auth_review(d):
                raise ValueError(f"{d.transaction_id} was not approved under the fail-open budget")
            rows.append(self._case_row(d, CaseKind.POST_AUTH, 1.0, AUDIT_PRIORITY_SCORE))
        return self._insert_cases(rows)

    @staticmethod
    def _case_row(d: Decision, kind: CaseKind, sample_rate: float, weight: float) -> tuple:
        amount = d.transaction.amount_minor
        return (
            d.transaction_id,
            encode(d).decode(),
            d.score,
            amount,
            weight * amount,
            d.model_version,
            _iso(d.decided_at),
            "open",
            kind.value,
            sample_rate,
            d.decided_at.timestamp(),
        )

    def _insert_cases(self, rows: list[tuple]) -> int:
        with self._tx():
            before = self.db.total_changes
            self.db.executemany(
                "INSERT OR IGNORE INTO cases (transaction_id, decision_json, score, amount_minor, priority, "
                "model_version, created_at, status, kind, sample_rate, created_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return self.db.total_changes - before

    def intake(self, decisions: Iterable[Decision], audit_rate: float = 0.0, keep: timedelta = DEFAULT_HISTORY) -> int:
        """Take decisions read from `decisions` (at least once: repeats happen) in one transaction:
        each payment into its card's history, a case for each flagged one, for each one approved under
        the fail-open budget (``post_auth``), and for each other approved one in the audit sample
        (``in_audit_sample``). Returns how many cases were opened.

        Idempotent by transaction id, first decision wins: a decision whose payment is already in the
        history (a redelivery, or a re-decision after a scorer restart that came out differently) is
        ignored, so a repeat can neither open a second case nor open one its first decision did not.
        The guard reaches back as far as the history is kept (``keep``, from the newest payment)."""
        first: dict[str, Decision] = {}
        for d in decisions:
            first.setdefault(d.transaction_id, d)
        with self._tx():
            ids = list(first)
            seen = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT transaction_id FROM card_payments WHERE transaction_id IN ({marks})"
                seen.update(tx for (tx,) in self.db.execute(query, chunk))
            fresh = [d for tx, d in first.items() if tx not in seen]
            self.record_payments(fresh, keep=keep)
            opened = self.add_cases([d for d in fresh if d.outcome is Outcome.FLAG])
            post_auth = [d for d in fresh if needs_post_auth_review(d)]
            opened += self.add_post_auth_cases(post_auth) if post_auth else 0
            audit = [
                d
                for d in fresh
                if d.outcome is Outcome.APPROVE
                and not needs_post_auth_review(d)
                and in_audit_sample(d.transaction_id, audit_rate)
            ]
            if audit:
                opened += self.add_audit_cases(audit, sample_rate=audit_rate)
        return opened

    def record_payments(self, decisions: Iterable[Decision], keep: timedelta = DEFAULT_HISTORY) -> int:
        """Remember every decided payment for its card's history, and forget those older than ``keep``.

        Age is measured from the newest payment stored, not the wall clock, so a replayed or
        simulated history keeps its last ``keep`` too. In production a case page would query the
        transaction warehouse instead; this bounded table keeps the reference self-contained."""
        rows = [
            (d.transaction_id, d.transaction.card_id, d.transaction.event_ts, encode(d).decode()) for d in decisions
        ]
        with self._tx():
            self.db.executemany("INSERT OR IGNORE INTO card_payments VALUES (?, ?, ?, ?)", rows)
            (newest,) = self.db.execute("SELECT MAX(event_ts) FROM card_payments").fetchone()
            if newest is not None:
                self.db.execute("DELETE FROM card_payments WHERE event_ts < ?", (newest - keep.total_seconds(),))
        return len(rows)

    def card_history(self, card_id: str, limit: int = 20) -> list[CardPayment]:
        """The card's most recent payments, newest first."""
        rows = self.db.execute(
            "SELECT decision_json FROM card_payments WHERE card_id = ? ORDER BY event_ts DESC LIMIT ?",
            (card_id, limit),
        )
        payments = []
        for (raw,) in rows:
            d = decode_decision(raw)
            t = d.transaction
            payments.append(
                CardPayment(
                    t.transaction_id,
                    t.event_time,
                    t.amount_minor,
                    t.currency,
                    t.merchant_id,
                    t.country,
                    d.outcome,
                    d.score,
                )
            )
        return payments

    # -- the queue ------------------------------------------------------------------------------

    def _case(self, row: tuple, now_ts: float) -> ReviewCase:
        (tx, decision_json, priority, status, created, kind, rate, claimed_by, expires, verdict, by, at, note) = row
        live_claim = claimed_by is not None and expires is not None and expires > now_ts
        return ReviewCase(
            transaction_id=tx,
            decision=decode_decision(decision_json),
            priority=priority,
            status=status,
            created_at=datetime.fromisoformat(created),
            kind=CaseKind(kind),
            sample_rate=rate,
            claimed_by=claimed_by if live_claim else None,
            claim_expires_at=datetime.fromtimestamp(expires, UTC) if live_claim else None,
            verdict=None if verdict is None else Verdict(verdict),
            reviewed_by=by,
            reviewed_at=None if at is None else datetime.fromisoformat(at),
            review_note=note,
        )

    def open_cases(self, limit: int = 50, now: datetime | None = None) -> list[ReviewCase]:
        """Open cases (claimed or not) in queue order: priority × (1 + age / SLA), oldest first among equals.

        The age boost depends on ``now``, so no index can hold this order: every open case is
        ranked per call, which is fine for a queue people work through, not for millions."""
        now_ts = (now or datetime.now(UTC)).timestamp()
        rows = self.db.execute(
            f"SELECT {_CASE_COLUMNS} FROM cases WHERE status = 'open' "
            "ORDER BY priority * (1.0 + MAX(0.0, ? - created_ts) / ?) DESC, created_ts, transaction_id LIMIT ?",
            (now_ts, self.sla.total_seconds(), limit),
        )
        return [self._case(r, now_ts) for r in rows]

    def get_case(self, transaction_id: str, now: datetime | None = None) -> ReviewCase | None:
        now_ts = (now or datetime.now(UTC)).timestamp()
        row = self.db.execute(
            f"SELECT {_CASE_COLUMNS} FROM cases WHERE transaction_id = ?", (transaction_id,)
        ).fetchone()
        return None if row is None else self._case(row, now_ts)

    def claim(self, transaction_id: str, reviewer: str, now: datetime | None = None) -> ReviewCase:
        """Claim an open case for ``reviewer`` until now + claim_timeout; renews the reviewer's own claim.

        Raises ClaimConflict if another reviewer holds an unexpired claim or the case is closed,
        KeyError if there is no such case."""
        reviewer = _reviewer(reviewer)
        now = now or datetime.now(UTC)
        now_ts = now.timestamp()
        with self._tx():
            claimed = self.db.execute(
                "UPDATE cases SET claimed_by = ?, claim_expires_ts = ? WHERE transaction_id = ? AND status = 'open' "
                "AND (claimed_by IS NULL OR claimed_by = ? OR claim_expires_ts <= ?)",
                (reviewer, now_ts + self.claim_timeout.total_seconds(), transaction_id, reviewer, now_ts),
            ).rowcount
            if not claimed:
                self._refuse(transaction_id, now_ts)
        case = self.get_case(transaction_id, now)
        assert case is not None
        return case

    def release(self, transaction_id: str, reviewer: str) -> bool:
        """Give a claimed case back to the queue; only its claimant can. True if it was released."""
        with self._tx():
            return bool(
                self.db.execute(
                    "UPDATE cases SET claimed_by = NULL, claim_expires_ts = NULL "
                    "WHERE transaction_id = ? AND claimed_by = ? AND status = 'open'",
                    (transaction_id, reviewer),
                ).rowcount
            )

    def _refuse(self, transaction_id: str, now_ts: float) -> None:
        row = self.db.execute(
            "SELECT status, claimed_by, claim_expires_ts FROM cases WHERE transaction_id = ?", (transaction_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no review case for transaction {transaction_id!r}")
        status, holder, expires = row
        live = holder is not None and expires is not None and expires > now_ts
        raise ClaimConflict(transaction_id, holder if live else None, status)

    # -- verdicts and labels ----------------------------------------------------------------------

    def record_label(
        self, transaction_id: str, is_fraud: bool, reviewer: str, note: str = "", at: datetime | None = None
    ) -> Label:
        """A reviewer's fraud/legitimate verdict (see ``record_verdict``)."""
        label = self.record_verdict(
            transaction_id, Verdict.FRAUD if is_fraud else Verdict.LEGITIMATE, reviewer, note, at=at
        )
        assert label is not None
        return label

    def record_verdict(
        self,
        transaction_id: str,
        verdict: Verdict,
        reviewer: str,
        note: str = "",
        at: datetime | None = None,
        require_claim: bool = False,
    ) -> Label | None:
        """Close a case with a reviewer's verdict, durable on return; the label, or None for unsure.

        The verdict, who and when are written on the case, and fraud/legitimate also into the
        label log (unpublished, for the outbox), in one transaction. A case claimed by someone
        else (unexpired) is refused with ClaimConflict. With ``require_claim`` (the console) the
        reviewer must hold the claim and the case must still be open; without it (the CLI, the
        demo's stand-in reviewer) an unclaimed or already closed case may be (re)labelled: the
        latest review wins."""
        reviewer = _reviewer(reviewer)
        at = at or datetime.now(UTC)
        now_ts = datetime.now(UTC).timestamp()
        with self._tx():
            row = self.db.execute(
                "SELECT status, claimed_by, claim_expires_ts, decision_json FROM cases WHERE transaction_id = ?",
                (transaction_id,),
            ).fetchone()
            if row is None:
                raise KeyError(f"no review case for transaction {transaction_id!r}")
            status, holder, expires, decision_json = row
            held_by_other = holder not in (None, reviewer) and expires is not None and expires > now_ts
            if held_by_other or (require_claim and (holder != reviewer or status != "open")):
                raise ClaimConflict(transaction_id, holder if held_by_other else None, status)
            closed = "unsure" if verdict is Verdict.UNSURE else "labelled"
            self.db.execute(
                "UPDATE cases SET status = ?, verdict = ?, reviewed_by = ?, reviewed_at = ?, review_note = ?, "
                "claimed_by = NULL, claim_expires_ts = NULL WHERE transaction_id = ?",
                (closed, verdict.value, reviewer, _iso(at), note, transaction_id),
            )
            if verdict is Verdict.UNSURE:
                return None
            label = Label(
                transaction_id=transaction_id,
                is_fraud=verdict is Verdict.FRAUD,
                source=LabelSource.REVIEW,
                known_at=at,
                author=reviewer,
                note=note,
                # the stream attributes the label to the merchant without a lookup
                merchant_id=decode_decision(decision_json).transaction.merchant_id,
            )
            self._upsert(label, published=False)
        return label

    def record_external_label(self, label: Label) -> bool:
        """A label from outside review (a chargeback read from `labels`); True if it was new."""
        return self.record_external_labels([label]) == 1

    def record_external_labels(self, labels: Iterable[Label]) -> int:
        """Labels from outside review in one transaction; returns how many were new or changed.

        Stored as published: they came from the topic, so they must not be sent back to it."""
        with self._tx():
            before = self.db.total_changes
            for label in labels:
                self._upsert(label, published=True)
            return self.db.total_changes - before

    def _upsert(self, label: Label, published: bool) -> None:
        self.db.execute(
            "INSERT INTO labels (transaction_id, is_fraud, source, author, note, known_at, published, merchant_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (transaction_id, source, author) DO UPDATE SET is_fraud = excluded.is_fraud, "
            "note = excluded.note, known_at = excluded.known_at, published = excluded.published, "
            "merchant_id = excluded.merchant_id "
            "WHERE labels.is_fraud != excluded.is_fraud OR labels.note != excluded.note "
            "OR labels.known_at != excluded.known_at",
            (
                label.transaction_id,
                int(label.is_fraud),
                label.source.value,
                label.author,
                label.note,
                _iso(label.known_at),
                int(published),
                label.merchant_id,
            ),
        )

    def unpublished_labels(self) -> list[tuple[int, Label]]:
        """The outbox: committed labels the broker has not acknowledged yet, oldest first, with their row ids."""
        rows = self.db.execute(
            "SELECT id, transaction_id, is_fraud, source, author, note, known_at, merchant_id FROM labels "
            "WHERE published = 0 ORDER BY id"
        )
        return [(row[0], _label(*row[1:])) for row in rows]

    def mark_published(self, label_ids: Iterable[int]) -> None:
        with self._tx():
            self.db.executemany("UPDATE labels SET published = 1 WHERE id = ?", [(i,) for i in label_ids])

    def labels(self, known_before: datetime | None = None) -> list[Label]:
        """The label log, optionally only labels known at or before a cut-off (no leakage into training)."""
        rows = self.db.execute(
            "SELECT transaction_id, is_fraud, source, author, note, known_at, merchant_id FROM labels "
            "ORDER BY known_at, id"
        )
        labels = [_label(*row) for row in rows]
        return [lb for lb in labels if known_before is None or lb.known_at <= known_before]

    def resolved_labels(self, known_before: datetime | None = None) -> dict[str, bool]:
        return resolve_labels(self.labels(), known_at=known_before)

    def queue_stats(self, now: datetime | None = None) -> tuple[int, float]:
        """(open cases awaiting a verdict, claimed or not; seconds since the oldest of them was
        decided, 0 when none is open)."""
        depth, oldest = self.db.execute("SELECT COUNT(*), MIN(created_ts) FROM cases WHERE status = 'open'").fetchone()
        if oldest is None:
            return depth, 0.0
        return depth, max(0.0, (now or datetime.now(UTC)).timestamp() - oldest)

    def counts(self) -> dict[str, int]:
        counts = dict(self.db.execute("SELECT status, COUNT(*) FROM cases GROUP BY status").fetchall())
        kinds = dict(self.db.execute("SELECT kind, COUNT(*) FROM cases WHERE status = 'open' GROUP BY kind"))
        by_source = dict(self.db.execute("SELECT source, COUNT(*) FROM labels GROUP BY source").fetchall())
        (unpublished,) = self.db.execute("SELECT COUNT(*) FROM labels WHERE published = 0").fetchone()
        return {
            "open": counts.get("open", 0),
            "open_audit": kinds.get("audit", 0),
            "labelled": counts.get("labelled", 0),
            "unsure": counts.get("unsure", 0),
            **{f"labels_{src}": n for src, n in by_source.items()},
            "labels_unpublished": unpublished,
        }


def _reviewer(name: str) -> str:
    if not name.strip():
        raise ValueError("reviewer: must name who labels the case")
    return name.strip()


def _label(
    tx: str, is_fraud: int, source: str, author: str, note: str, known_at: str, merchant_id: str | None
) -> Label:
    return Label(
        transaction_id=tx,
        is_fraud=bool(is_fraud),
        source=LabelSource(source),
        author=author,
        note=note,
        known_at=datetime.fromisoformat(known_at),
        merchant_id=merchant_id,
    )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error): one writer at a time, all or nothing.

    Inside a transaction already open on the connection it joins it: the outer one commits."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self.outer:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
