"""Alerts that need a statistic over its threshold for a sustained period, not one noisy window.

A single window over threshold is common on live traffic (a busy evening, a small sample); paging
on it trains people to ignore pages. An alert therefore fires only after ``sustain`` consecutive
windows over threshold, and clears after the same number under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SustainedAlert:
    name: str
    threshold: float
    sustain: int = 2  # consecutive windows over (under) threshold to fire (clear)
    firing: bool = False
    _run: int = field(default=0, repr=False)

    def observe(self, value: float | None) -> str | None:
        """Feed one window's statistic; returns "fire" or "clear" when the state changes.

        ``None`` (too little data in the window) neither confirms nor breaks a run.
        """
        if value is None:
            return None
        breached = value > self.threshold
        self._run = self._run + 1 if breached != self.firing else 0
        if self._run >= self.sustain:
            self.firing, self._run = breached, 0
            return "fire" if breached else "clear"
        return None
