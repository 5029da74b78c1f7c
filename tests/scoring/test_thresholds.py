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


def test_a_batchs_outcomes_are_each_rows_thresholds_raised_by_its_rule_hits():
    """``scoring.engine._outcomes`` decides a whole batch at once; it must agree with
    ``DecisionThresholds.outcome`` row by row (float32 scores on the bands' edges included, each
    row by its arm's thresholds) and with the precedence: a rule's action is a floor."""
    import numpy as np

    from schema import RuleHit
    from scoring.engine import _outcomes, _Scored
    from scoring.release import ServingRelease

    champion, canary = DecisionThresholds(flag=0.7, block=0.9), DecisionThresholds(flag=0.3, block=0.5)
    release = ServingRelease(
        champion=object(), champion_thresholds=champion, challenger=object(), challenger_thresholds=canary,
        mode="canary", share=0.5,
    )  # fmt: skip
    rng = np.random.default_rng(7)
    edges = [0.3, 0.5, 0.7, 0.9, np.nextafter(np.float32(0.7), np.float32(0)), np.float32(0.7), 0.0, 1.0]
    scores = np.concatenate([np.array(edges, dtype=np.float32), rng.random(400, dtype=np.float32)])
    in_canary = rng.random(len(scores)) < 0.5
    actions = [None, Outcome.APPROVE, Outcome.FLAG, Outcome.BLOCK]
    hits = [
        [RuleHit(rule_id="r", action=a, reason="x")] if (a := actions[k]) is not None else []
        for k in rng.integers(0, 4, len(scores))
    ]
    got = _outcomes(release, _Scored(scores, in_canary, 0.0, 0.0), hits)
    for score, canary_row, row_hits, outcome in zip(scores.tolist(), in_canary, hits, got, strict=True):
        by_score = (canary if canary_row else champion).outcome(score)
        expected = max([by_score, *(h.action for h in row_hits)], key=lambda o: o.severity)
        assert outcome is expected, (score, canary_row, row_hits)
