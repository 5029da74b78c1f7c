"""The rules engine: hard calls declared as data (blocked countries, amount ceilings, velocity)."""

from rules_engine.engine import RuleFileError, RuleSet, load_rules
from rules_engine.rules import RULE_KINDS

__all__ = ["RULE_KINDS", "RuleFileError", "RuleSet", "load_rules"]
