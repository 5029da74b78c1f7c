import msgspec
import pytest

from schema import DecisionThresholds, Outcome


@pytest.mark.parametrize(
    ("score", "outcome"),
    [
        (0.0, Outcome.APPROVE),
        (0.6999, Outcome.APPROVE),
        (0.7, Outcome.FLAG),
        (0.8999, Outcome.FLAG),
        (0.9, Outcome.BLOCK),
        (1.0, Outcome.BLOCK),
    ],
)
def test_default_thresholds_are_half_open_bands(score, outcome):
    assert DecisionThresholds().outcome(score) is outcome


def test_custom_thresholds():
    t = DecisionThresholds(flag=0.3, block=0.5)
    assert t.outcome(0.31) is Outcome.FLAG and t.outcome(0.5) is Outcome.BLOCK


def test_flag_above_block_is_refused():
    with pytest.raises(ValueError, match="flag"):
        DecisionThresholds(flag=0.95, block=0.9)


def test_out_of_range_threshold_is_refused():
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"flag": 1.5, "block": 2.0}, DecisionThresholds)
