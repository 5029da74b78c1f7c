"""The human review queue: durable cases (flagged and audit), exclusive claims, verdicts, the label log."""

from review_queue.metrics import ReviewMetrics
from review_queue.store import (
    CardPayment,
    CaseKind,
    ClaimConflict,
    ReviewCase,
    ReviewStore,
    Verdict,
    in_audit_sample,
    needs_post_auth_review,
)

__all__ = [
    "CardPayment",
    "CaseKind",
    "ClaimConflict",
    "ReviewCase",
    "ReviewMetrics",
    "ReviewStore",
    "Verdict",
    "in_audit_sample",
    "needs_post_auth_review",
]
