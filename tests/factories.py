"""Builders for realistic test transactions (not fixtures: plain functions tests call)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schema import Channel, Transaction

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def txn(
    n: int = 0,
    *,
    at: datetime | None = None,
    minutes: float = 0.0,
    card: str = "card-000001",
    merchant: str = "merch-0001",
    amount_minor: int = 2500,
    country: str = "DE",
    card_country: str = "DE",
    device: str = "dev-0000001",
    category: str = "grocery",
    channel: Channel = Channel.CARD_PRESENT,
    currency: str = "EUR",
) -> Transaction:
    return Transaction(
        transaction_id=f"tx-test-{n:06d}",
        event_time=(at or T0) + timedelta(minutes=minutes),
        card_id=card,
        customer_id="cust-000001",
        merchant_id=merchant,
        merchant_category=category,
        amount_minor=amount_minor,
        currency=currency,
        country=country,
        card_country=card_country,
        device_id=device,
        channel=channel,
    )
