"""Rule kinds. A rule file names a kind; each kind is one small class, registered by name.

Every rule has a versioned id (``velocity_card_10m@1``): change a rule's meaning, bump the
version, so a decision recorded months ago still says which rule fired. A rule that cannot be
evaluated (a feature it needs is missing, e.g. while Redis is down) reports that explicitly
rather than passing silently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schema import Outcome, RuleHit, Transaction
from streaming.features import WINDOWED_FEATURES, Aggregation

ColumnOf = Callable[[str], "np.ndarray | None"]  # a feature's values for a batch; None: not available
RuleId = Annotated[str, Field(pattern=r"^[a-z0-9_]+@[0-9]+$")]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: RuleId
    action: Literal["flag", "block"]
    description: str = ""

    def _hit(self, reason: str) -> RuleHit:
        return RuleHit(rule_id=self.id, action=Outcome(self.action), reason=reason)

    def _not_evaluated(self, reason: str) -> RuleHit:
        return RuleHit(rule_id=self.id, action=Outcome.APPROVE, reason=reason, evaluated=False)

    def evaluate(self, txn: Transaction, features: Mapping[str, float]) -> RuleHit | None:
        raise NotImplementedError

    def may_fire(self, transactions: Sequence[Transaction], column: ColumnOf) -> np.ndarray:
        """For a batch: the payments ``evaluate`` could return a hit for (a superset is allowed;
        ``evaluate`` decides). Lets a batch skip the rule for the many payments it cannot touch."""
        return np.ones(len(transactions), dtype=bool)


class BlockedCountry(_Rule):
    """Transactions in a listed country (ISO 3166 alpha-2), e.g. sanctioned jurisdictions."""

    kind: Literal["blocked_country"]
    countries: frozenset[str]

    @field_validator("countries")
    @classmethod
    def _alpha2(cls, countries: frozenset[str]) -> frozenset[str]:
        bad = sorted(c for c in countries if len(c) != 2 or not c.isupper())
        if bad:
            raise ValueError(f"not ISO 3166 alpha-2 country codes: {bad}")
        return countries

    def may_fire(self, transactions: Sequence[Transaction], column: ColumnOf) -> np.ndarray:
        return np.fromiter((t.country in self.countries for t in transactions), dtype=bool, count=len(transactions))

    def evaluate(self, txn: Transaction, features: Mapping[str, float]) -> RuleHit | None:
        if txn.country in self.countries:
            return self._hit(f"transaction country {txn.country} is on the blocked list")
        return None


class AmountCeiling(_Rule):
    """Amounts above a per-currency ceiling, in minor units (cents)."""

    kind: Literal["amount_ceiling"]
    max_amount_minor: dict[str, Annotated[int, Field(gt=0)]]

    def may_fire(self, transactions: Sequence[Transaction], column: ColumnOf) -> np.ndarray:
        ceilings = self.max_amount_minor
        return np.fromiter(
            (t.amount_minor > ceilings.get(t.currency, 0) for t in transactions), dtype=bool, count=len(transactions)
        )

    def evaluate(self, txn: Transaction, features: Mapping[str, float]) -> RuleHit | None:
        ceiling = self.max_amount_minor.get(txn.currency)
        if ceiling is None:
            return self._not_evaluated(f"no ceiling configured for currency {txn.currency}")
        if txn.amount_minor > ceiling:
            return self._hit(
                f"amount {txn.amount_minor / 100:,.2f} {txn.currency} is over the ceiling of "
                f"{ceiling / 100:,.2f} {txn.currency}"
            )
        return None


_COUNT_WINDOWS = {
    f.window.name: f.name for f in WINDOWED_FEATURES if f.entity == "card" and f.aggregation is Aggregation.COUNT
}


class CardVelocity(_Rule):
    """More than ``max_transactions`` on one card within ``window`` (counting this one)."""

    kind: Literal["velocity"]
    window: str
    max_transactions: Annotated[int, Field(gt=0)]

    @field_validator("window")
    @classmethod
    def _declared_window(cls, window: str) -> str:
        if window not in _COUNT_WINDOWS:
            raise ValueError(f"no card count feature for window {window!r}; declared: {sorted(_COUNT_WINDOWS)}")
        return window

    def may_fire(self, transactions: Sequence[Transaction], column: ColumnOf) -> np.ndarray:
        counts = column(_COUNT_WINDOWS[self.window])
        return np.ones(len(transactions), dtype=bool) if counts is None else counts > self.max_transactions

    def evaluate(self, txn: Transaction, features: Mapping[str, float]) -> RuleHit | None:
        feature = _COUNT_WINDOWS[self.window]
        count = features.get(feature)
        if count is None:
            return self._not_evaluated(f"velocity unknown: feature {feature} unavailable")
        if count > self.max_transactions:
            return self._hit(f"{int(count)} transactions on this card in {self.window} (limit {self.max_transactions})")
        return None


RULE_KINDS: dict[str, type[_Rule]] = {
    "blocked_country": BlockedCountry,
    "amount_ceiling": AmountCeiling,
    "velocity": CardVelocity,
}

Rule = Annotated[BlockedCountry | AmountCeiling | CardVelocity, Field(discriminator="kind")]
