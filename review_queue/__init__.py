"""The human review queue: durable cases for flagged decisions, and the label log."""

from review_queue.store import ReviewCase, ReviewStore

__all__ = ["ReviewCase", "ReviewStore"]
