"""Issue 8, item 8: SIGKILL while reviewers' labels are being written loses no committed label and
leaves no half-written case.

A child process opens cases and labels them through the store's real API (intake, claim, verdict,
relabel, unsure, outbox marking) in a loop. It prints what it is about to write, then, after the
call returned (committed), what it wrote. The test kills it with SIGKILL at random moments, several
times, reopening the store in between; the store must hold every label the child reported as
committed (or a later one it had started to write), and its cases must all be in a whole state.
"""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from review_queue import ReviewStore

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys
from review_queue import ReviewStore, Verdict
from tests.review_queue.cases import decision

def say(*parts):
    print(*parts, flush=True)

store = ReviewStore(sys.argv[1])
(i,) = store.db.execute("SELECT COUNT(*) FROM cases").fetchone()
labelled = [tx for (tx,) in store.db.execute("SELECT transaction_id FROM cases WHERE status = 'labelled'")]
say("started", i)
while True:
    i += 1
    d = decision(i, card=f"card-{i % 17:06d}")
    tx = d.transaction_id
    store.add_cases([d])
    store.claim(tx, "alice")
    verdict = Verdict.UNSURE if i % 11 == 0 else (Verdict.FRAUD if i % 3 else Verdict.LEGITIMATE)
    say("intent", tx, verdict.value)
    store.record_verdict(tx, verdict, "alice", note=f"case {i}", require_claim=True)
    say("committed", tx, verdict.value)
    if verdict is not Verdict.UNSURE:
        labelled.append(tx)
    if i % 4 == 0 and labelled:  # a reviewer changes their mind on an earlier case: the latest wins
        old = labelled[(i * 7) % len(labelled)]
        (was,) = store.db.execute("SELECT verdict FROM cases WHERE transaction_id = ?", (old,)).fetchone()
        flipped = Verdict.LEGITIMATE if was == "fraud" else Verdict.FRAUD
        say("intent", old, flipped.value)
        store.record_verdict(old, flipped, "alice", note=f"relabel at {i}")
        say("committed", old, flipped.value)
    if i % 5 == 0:  # the outbox: labels the broker acknowledged
        ids = [label_id for label_id, _ in store.unpublished_labels()]
        store.mark_published(ids)
        say("published", *ids)
"""


class Child:
    def __init__(self, db: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
        )
        self.lines: list[list[str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.endswith("\n"):  # a line cut by the kill was never reported
                self.lines.append(line.split())

    def committed(self) -> int:
        return sum(1 for parts in list(self.lines) if parts[0] == "committed")


def _check_store(db: Path, reported: list[list[str]]) -> dict[str, int]:
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    cases = {
        tx: (status, verdict, by, claimed)
        for tx, status, verdict, by, claimed in raw.execute(
            "SELECT transaction_id, status, verdict, reviewed_by, claimed_by FROM cases"
        )
    }
    labels = {
        tx: (bool(fraud), published, label_id)
        for label_id, tx, fraud, published in raw.execute(
            "SELECT id, transaction_id, is_fraud, published FROM labels WHERE source = 'review' AND author = 'alice'"
        )
    }
    raw.close()
    # whole cases only: a verdict always with its status, reviewer and (fraud/legitimate) its label
    for tx, (status, verdict, by, claimed) in cases.items():
        if status == "open":
            assert verdict is None and by is None and tx not in labels, (tx, cases[tx])
        elif status == "labelled":
            assert verdict in ("fraud", "legitimate") and by == "alice" and claimed is None, (tx, cases[tx])
            assert labels[tx][0] == (verdict == "fraud"), (tx, cases[tx], labels[tx])
        else:
            assert status == "unsure" and verdict == "unsure" and tx not in labels, (tx, cases[tx])
    assert set(labels) <= {tx for tx, c in cases.items() if c[0] == "labelled"}  # no label without its case

    # every committed verdict is there, or one the child had started to write after it
    # and every label marked published stays so until a later verdict changes it (then it is due again)
    tx_of = {label_id: tx for tx, (_, _, label_id) in labels.items()}
    last: dict[str, str] = {}
    pending: dict[str, set[str]] = {}
    published: set[str] = set()
    for kind, *rest in reported:
        if kind == "committed":
            last[rest[0]] = rest[1]
            pending[rest[0]] = {rest[1]}
            published.discard(rest[0])
        elif kind == "intent":
            pending.setdefault(rest[0], set()).add(rest[1])
        elif kind == "published":
            published.update(tx_of[int(i)] for i in rest)
    for tx, verdict in last.items():
        assert cases[tx][1] in pending[tx], f"{tx}: committed {verdict}, store has {cases[tx][1]}"
    # A case whose commit was never reported (killed between commit and print) may have been
    # changed by that verdict: only a case whose every verdict was reported can be held to this.
    unpublished = [tx for tx in published if labels[tx][1] != 1 and tx in last and pending[tx] == {last[tx]}]
    assert unpublished == [], "acknowledged by the broker, yet back in the outbox"
    return {"cases": len(cases), "labels": len(labels), "committed": sum(k == "committed" for k, *_ in reported)}


def test_sigkill_while_labelling_loses_no_committed_label_and_leaves_no_half_written_case(tmp_path):
    db = tmp_path / "review.db"
    rng = random.Random(8)
    reported: list[list[str]] = []
    kills = 0
    for _ in range(6):
        child = Child(db)
        target = child.committed() + rng.randint(5, 60)
        deadline = time.monotonic() + 30
        while child.committed() < target and child.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.03))  # a random moment: often inside a transaction or its fsync
        assert child.proc.poll() is None, "the child stopped by itself"
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait()
        child.reader.join(5)
        kills += 1
        assert child.lines and child.lines[0][0] == "started"
        reported += child.lines[1:]
        _check_store(db, reported)
    summary = _check_store(db, reported)
    assert kills == 6 and summary["committed"] > 100 and summary["labels"] > 50
    with ReviewStore(db) as store:  # the real API reads it back too: the latest verdict per payment
        resolved = store.resolved_labels()
        assert len(resolved) == summary["labels"]
