"""Builders for realistic test transactions (not fixtures: plain functions tests call)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

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


def register_tiny_model(root: Path, fraud_if: Callable[[np.ndarray], np.ndarray], **training: Any) -> str:
    """Train a small model on random feature rows (fraud where ``fraud_if(rows)``), register it
    with its XGBoost file, promote it, and return its version."""
    from retrain import ModelRegistry
    from retrain.train import TrainingConfig, fit, to_onnx
    from streaming.features import MODEL_FEATURES

    x = np.random.default_rng(0).normal(size=(2000, len(MODEL_FEATURES))).astype(np.float32)
    model = fit(x, fraud_if(x).astype(np.int8), TrainingConfig(**{"n_estimators": 20, **training}))
    registry = ModelRegistry(root)
    version = registry.register(
        to_onnx(model, len(MODEL_FEATURES)),
        {"feature_names": list(MODEL_FEATURES)},
        native_model=bytes(model.get_booster().save_raw("ubj")),
    )
    registry.promote(version, {"reason": "test"})
    return version


def set_model_thresholds(root: Path, version: str, flag: float, block: float) -> None:
    """Rewrite a registered model's operating thresholds (its metadata), as a test fixture."""
    path = root / "models" / version / "metadata.json"
    meta = json.loads(path.read_text())
    meta["operating_point"] = {"flag": flag, "block": block}
    path.write_text(json.dumps(meta))
