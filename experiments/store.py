"""The running experiment, as one JSON file every scorer polls (beside the model registry).

``experiment.json`` holds the declaration and where it stands: the ramp step, the traffic the
treatments take, and the status. Every change is appended to ``experiments.jsonl`` with who and
why, like the registry's ``promotions.jsonl``. Writes replace the file atomically, so a scorer
reads the old state or the new, never half.

Status: ``running`` (the ramp step's traffic on the treatments), ``halted`` (a guardrail fired or
an operator stopped it: everyone back on control), ``concluded`` (the sequential test decided;
everyone on control until someone launches), ``launched`` (the winning treatment decides every
card outside the holdout; the holdout stays on control as the long-term comparison).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from experiments.config import CONTROL_ARM, Experiment

RUNNING, HALTED, CONCLUDED, LAUNCHED = "running", "halted", "concluded", "launched"
STATE_FILE = "experiment.json"
LOG_FILE = "experiments.jsonl"


@dataclass(frozen=True)
class ExperimentState:
    experiment: Experiment
    status: str
    step: int  # index into experiment.ramp
    started_at: datetime
    step_started_at: datetime
    reason: str = ""
    winner: str | None = None  # the arm launched (status launched)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def traffic(self) -> float:
        """The treatments' share of the cards outside the holdout, as served now."""
        if self.status == RUNNING:
            return self.experiment.ramp[self.step].traffic
        return 1.0 if self.status == LAUNCHED else 0.0

    def shares(self) -> dict[str, float]:
        """Each arm's share of all cards, as served now."""
        if self.status != LAUNCHED:
            return self.experiment.shares_at(self.traffic)
        shares = {name: 0.0 for name in (a.name for a in self.experiment.arms)}
        shares[self.winner or CONTROL_ARM] = 1.0 - self.experiment.holdout
        if self.experiment.holdout:
            shares["holdout"] = self.experiment.holdout
        return shares

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["experiment"] = self.experiment.model_dump(mode="json")
        out["started_at"] = self.started_at.isoformat()
        out["step_started_at"] = self.step_started_at.isoformat()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExperimentState:
        return cls(
            experiment=Experiment.model_validate(data["experiment"]),
            status=data["status"],
            step=int(data["step"]),
            started_at=datetime.fromisoformat(data["started_at"]),
            step_started_at=datetime.fromisoformat(data["step_started_at"]),
            reason=data.get("reason", ""),
            winner=data.get("winner"),
            extra=data.get("extra") or {},
        )


class ExperimentStore:
    """Reads and changes the running experiment (one at a time) in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def path(self) -> Path:
        return self.root / STATE_FILE

    def current(self) -> ExperimentState | None:
        try:
            return ExperimentState.from_json(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def stamp(self) -> int:
        """Changes whenever the state does: cheap to poll."""
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def start(self, experiment: Experiment, by: str = "operator", now: datetime | None = None) -> ExperimentState:
        running = self.current()
        if running is not None and running.status in (RUNNING, LAUNCHED):
            raise ValueError(
                f"experiment {running.experiment.name!r} is {running.status}: stop it first (`fraud experiment stop`)"
            )
        now = now or datetime.now(UTC)
        state = ExperimentState(experiment, RUNNING, 0, now, now, reason="started")
        self._save(state, "start", by)
        return state

    def advance(self, reason: str, by: str = "controller", now: datetime | None = None) -> ExperimentState:
        """The next ramp step (the caller checked the gate)."""
        state = self._require(RUNNING)
        if state.step + 1 >= len(state.experiment.ramp):
            raise ValueError(f"experiment {state.experiment.name!r} is at its last ramp step already")
        state = replace(state, step=state.step + 1, step_started_at=now or datetime.now(UTC), reason=reason)
        self._save(state, "advance", by)
        return state

    def halt(self, reason: str, by: str = "controller") -> ExperimentState:
        state = replace(self._require(RUNNING, LAUNCHED), status=HALTED, reason=reason)
        self._save(state, "halt", by)
        return state

    def conclude(self, reason: str, by: str = "controller") -> ExperimentState:
        state = replace(self._require(RUNNING), status=CONCLUDED, reason=reason)
        self._save(state, "conclude", by)
        return state

    def launch(self, arm: str, reason: str, by: str = "operator") -> ExperimentState:
        state = self._require(RUNNING, CONCLUDED)
        if arm not in {a.name for a in state.experiment.treatments}:
            raise ValueError(f"arm: {arm!r} is not a treatment of {state.experiment.name!r}")
        state = replace(state, status=LAUNCHED, winner=arm, reason=reason)
        self._save(state, "launch", by)
        return state

    def record_looks(self, plans: dict[str, Any], by: str = "controller") -> ExperimentState:
        """Keep the sequential test's plans and the looks taken so far (``extra["plans"]``): alpha
        already spent stays spent across restarts of the controller."""
        state = self._require(RUNNING, LAUNCHED, CONCLUDED, HALTED)
        state = replace(state, extra={**state.extra, "plans": plans})
        self._save(state, "looks", by)
        return state

    def stop(self, reason: str, by: str = "operator") -> ExperimentState | None:
        """End the experiment: the file goes, every scorer serves control's policy alone."""
        state = self.current()
        if state is None:
            return None
        self.path.unlink(missing_ok=True)
        self._log({"event": "stop", "experiment": state.experiment.name, "reason": reason, "by": by})
        return state

    def history(self) -> list[dict[str, Any]]:
        path = self.root / LOG_FILE
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def _require(self, *statuses: str) -> ExperimentState:
        state = self.current()
        if state is None:
            raise ValueError("no experiment: start one with `fraud experiment start`")
        if state.status not in statuses:
            raise ValueError(f"experiment {state.experiment.name!r} is {state.status}, not {' or '.join(statuses)}")
        return state

    def _save(self, state: ExperimentState, event: str, by: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state.to_json(), indent=2, sort_keys=True))
        os.replace(tmp, self.path)
        entry = {"event": event, "experiment": state.experiment.name, "status": state.status, "step": state.step}
        self._log({**entry, "traffic": state.traffic, "reason": state.reason, "by": by})

    def _log(self, entry: dict[str, Any]) -> None:
        with (self.root / LOG_FILE).open("a") as fh:
            fh.write(json.dumps({"at": datetime.now(UTC).isoformat(), **entry}, sort_keys=True) + "\n")
