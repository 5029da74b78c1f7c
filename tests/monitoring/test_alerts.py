"""Sustained alerts: one noisy window never pages; a sustained breach does, and clears the same way."""

from monitoring import SustainedAlert


def test_fires_only_after_consecutive_windows_over_threshold_and_clears_the_same_way():
    alert = SustainedAlert("kl:amount", threshold=0.1, sustain=2)
    events = [alert.observe(v) for v in (0.2, 0.05, 0.2, None, 0.3, 0.4, 0.05, 0.2, 0.01, 0.02)]
    # 0.2 then 0.05: the run breaks; 0.2, (no data), 0.3: fires on the second breach; then it
    # stays firing through one dip (0.05 then 0.2) and clears after two quiet windows.
    assert events == [None, None, None, None, "fire", None, None, None, None, "clear"]
    assert not alert.firing


def test_sustain_of_one_fires_at_once():
    alert = SustainedAlert("psi:score", threshold=0.25, sustain=1)
    assert alert.observe(0.3) == "fire" and alert.firing
