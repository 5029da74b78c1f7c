"""A rule set loaded from a YAML file and evaluated against a transaction and its features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from rules_engine.rules import ColumnOf, Rule
from schema import RuleHit, Transaction


class RuleFileError(ValueError):
    """A rule file that cannot be used; the message names the file, the rule and the field."""


class RuleSet(BaseModel):
    """The rules in force. Order matters only for the order of hits in a decision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    rules: tuple[Rule, ...]

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleSet:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate rule ids: {dupes}")
        return self

    def evaluate_batch(
        self, transactions: Sequence[Transaction], features: Sequence[Mapping[str, float]], column: ColumnOf
    ) -> list[list[RuleHit]]:
        """``evaluate`` for every payment of a batch, the same hits in the same order; each rule is
        evaluated only for the payments its ``may_fire`` pre-filter keeps (most payments fire no rule).

        Args:
            transactions: the batch.
            features: each payment's feature vector.
            column: a feature's values for the whole batch (None when the batch lacks it).
        """
        hits: list[list[RuleHit]] = [[] for _ in transactions]
        for rule in self.rules:
            for i in rule.may_fire(transactions, column).nonzero()[0].tolist():
                hit = rule.evaluate(transactions[i], features[i])
                if hit is not None:
                    hits[i].append(hit)
        return hits

    def evaluate(self, txn: Transaction, features: Mapping[str, float]) -> list[RuleHit]:
        """Every rule that fired or could not be evaluated, in file order."""
        hits = []
        for rule in self.rules:
            hit = rule.evaluate(txn, features)
            if hit is not None:
                hits.append(hit)
        return hits


def load_rules(path: Path | None = None) -> RuleSet:
    """Load and validate a rule file; ``None`` loads the rules shipped with the package."""
    if path is None:
        text = resources.files("rules_engine").joinpath("default_rules.yaml").read_text()
        source = "default_rules.yaml"
    else:
        text, source = Path(path).read_text(), str(path)
    try:
        return RuleSet.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise RuleFileError(f"{source}: {problems}") from exc
    except yaml.YAMLError as exc:
        raise RuleFileError(f"{source}: not valid YAML: {exc}") from exc
