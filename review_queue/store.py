"""The review queue's durable store (SQLite): cases for flagged decisions, and the label log.

Durability: WAL with ``synchronous=FULL``, and every write in one transaction, so when a call
returns the label is on disk and a crash leaves no half-written case. Cases are keyed by
transaction id, so a decision delivered twice opens one case. Conflicting labels for one
transaction resolve by ``schema.resolve_labels``: a chargeback beats a review, the latest review
beats earlier ones. A later issue can put PostgreSQL behind the same methods.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from schema import Decision, Label, LabelSource, Outcome, decode_decision, encode, resolve_labels

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    transaction_id TEXT PRIMARY KEY,
    decision_json  TEXT NOT NULL,
    score          REAL,
    amount_minor   INTEGER NOT NULL,
    priority       REAL NOT NULL,
    model_version  TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('open', 'labelled'))
);
CREATE INDEX IF NOT EXISTS cases_open ON cases (status, priority DESC, created_at);
CREATE TABLE IF NOT EXISTS labels (
    id             INTEGER PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    is_fraud       INTEGER NOT NULL,
    source         TEXT NOT NULL,
    author         TEXT NOT NULL,
    note           TEXT NOT NULL,
    known_at       TEXT NOT NULL,
    UNIQUE (transaction_id, source, author)
);
"""


@dataclass(frozen=True)
class ReviewCase:
    transaction_id: str
    decision: Decision
    priority: float
    status: str
    created_at: datetime


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


class ReviewStore:
    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)  # explicit transactions only
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise RuntimeError(f"{path}: review store schema {version}, this code knows {SCHEMA_VERSION}")

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_case(self, decision: Decision) -> bool:
        """Open a case for a flagged decision; False if one exists already (duplicate delivery)."""
        return self.add_cases([decision]) == 1

    def add_cases(self, decisions: Iterable[Decision]) -> int:
        """Open cases for flagged decisions in one transaction; returns how many were new."""
        rows = []
        for d in decisions:
            if d.outcome is not Outcome.FLAG:
                raise ValueError(f"only flagged decisions are reviewed; {d.transaction_id} is {d.outcome.value}")
            amount = d.transaction.amount_minor
            rows.append(
                (
                    d.transaction_id,
                    encode(d).decode(),
                    d.score,
                    amount,
                    (d.score or 1.0) * amount,
                    d.model_version,
                    _iso(d.decided_at),
                    "open",
                )
            )
        with self._tx():
            before = self.db.total_changes
            self.db.executemany("INSERT OR IGNORE INTO cases VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return self.db.total_changes - before

    def _case(self, row: tuple) -> ReviewCase:
        tx, decision_json, priority, status, created = row
        return ReviewCase(tx, decode_decision(decision_json), priority, status, datetime.fromisoformat(created))

    def open_cases(self, limit: int = 50) -> list[ReviewCase]:
        """Open cases, highest priority (score x amount) first, oldest first among equals."""
        rows = self.db.execute(
            "SELECT transaction_id, decision_json, priority, status, created_at FROM cases "
            "WHERE status = 'open' ORDER BY priority DESC, created_at LIMIT ?",
            (limit,),
        )
        return [self._case(r) for r in rows]

    def get_case(self, transaction_id: str) -> ReviewCase | None:
        row = self.db.execute(
            "SELECT transaction_id, decision_json, priority, status, created_at FROM cases WHERE transaction_id = ?",
            (transaction_id,),
        ).fetchone()
        return None if row is None else self._case(row)

    def record_label(
        self, transaction_id: str, is_fraud: bool, reviewer: str, note: str = "", at: datetime | None = None
    ) -> Label:
        """A reviewer's verdict: written and the case closed in one transaction, durable on return."""
        if not reviewer.strip():
            raise ValueError("reviewer: must name who labels the case")
        label = Label(
            transaction_id=transaction_id,
            is_fraud=is_fraud,
            source=LabelSource.REVIEW,
            known_at=at or datetime.now(UTC),
            author=reviewer,
            note=note,
        )
        with self._tx():
            closed = self.db.execute(
                "UPDATE cases SET status = 'labelled' WHERE transaction_id = ?", (transaction_id,)
            ).rowcount
            if closed == 0:
                raise KeyError(f"no review case for transaction {transaction_id!r}")
            self._upsert(label)
        return label

    def record_external_label(self, label: Label) -> bool:
        """A label from outside review (a chargeback); True if it was new."""
        with self._tx():
            before = self.db.total_changes
            self._upsert(label)
            return self.db.total_changes > before

    def _upsert(self, label: Label) -> None:
        self.db.execute(
            "INSERT INTO labels (transaction_id, is_fraud, source, author, note, known_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (transaction_id, source, author) DO UPDATE SET is_fraud = excluded.is_fraud, "
            "note = excluded.note, known_at = excluded.known_at "
            "WHERE labels.is_fraud != excluded.is_fraud OR labels.note != excluded.note "
            "OR labels.known_at != excluded.known_at",
            (
                label.transaction_id,
                int(label.is_fraud),
                label.source.value,
                label.author,
                label.note,
                _iso(label.known_at),
            ),
        )

    def labels(self, known_before: datetime | None = None) -> list[Label]:
        """The label log, optionally only labels known at or before a cut-off (no leakage into training)."""
        rows = self.db.execute(
            "SELECT transaction_id, is_fraud, source, author, note, known_at FROM labels ORDER BY known_at, id"
        )
        labels = [
            Label(
                transaction_id=tx,
                is_fraud=bool(f),
                source=LabelSource(src),
                author=author,
                note=note,
                known_at=datetime.fromisoformat(known),
            )
            for tx, f, src, author, note, known in rows
        ]
        return [lb for lb in labels if known_before is None or lb.known_at <= known_before]

    def resolved_labels(self, known_before: datetime | None = None) -> dict[str, bool]:
        return resolve_labels(self.labels(), known_at=known_before)

    def counts(self) -> dict[str, int]:
        counts = dict(self.db.execute("SELECT status, COUNT(*) FROM cases GROUP BY status").fetchall())
        by_source = dict(self.db.execute("SELECT source, COUNT(*) FROM labels GROUP BY source").fetchall())
        return {
            "open": counts.get("open", 0),
            "labelled": counts.get("labelled", 0),
            **{f"labels_{src}": n for src, n in by_source.items()},
        }


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error): one writer at a time, all or nothing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
