"""Which model decides which payment: champion, shadow challenger, canary challenger.

The registry records the release (``champion`` and ``challenger.json``); each scorer process polls
it and swaps in a new ``ServingRelease`` whole. The decision path reads the release once per
batch, so a batch is decided by one consistent release, and a swap never fails a request: the new
models are loaded (and refused if they cannot serve) before the reference changes.

* **Shadow**: the challenger scores every payment too; its decisions are logged to their own
  topic and never acted on.
* **Canary**: the challenger decides the payments of ``share`` of the cards, chosen by a stable
  hash of the card id, so one card always meets one model (a customer never sees decisions flip
  between models payment by payment, and per-card features stay comparable between arms).
  ``CanaryGuard`` compares the canary's flag rate, block rate and model latency with the
  champion's and rolls the canary back when one leaves its guard band.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from retrain.registry import ModelLoadError, ModelRegistry, RegisteredModel, model_thresholds
from schema import DecisionThresholds, Outcome

log = logging.getLogger(__name__)

CHAMPION_ARM = "champion"
CANARY_ARM = "canary"
SHADOW_ARM = "shadow"


@dataclass(frozen=True)
class GuardBand:
    """How far a canary may drift from the champion before it is rolled back.

    Rates are compared as ratios with an absolute slack, because at fraud's low base rates a ratio
    alone trips on a handful of flags (0.1% vs 0.3% is 3x but may be noise over 2,000 payments).
    """

    min_decisions: int = 2000  # canary decisions before the guard judges anything
    max_flag_rate_ratio: float = 2.0
    max_block_rate_ratio: float = 2.0
    rate_slack: float = 0.002  # absolute: canary rate may exceed ratio x champion's by this
    max_latency_ratio: float = 3.0  # canary model time per payment vs the champion's

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> GuardBand:
        return cls(**{k: type(getattr(cls, k))(v) for k, v in data.items()})


@dataclass(frozen=True)
class ServingRelease:
    champion: RegisteredModel
    champion_thresholds: DecisionThresholds
    challenger: RegisteredModel | None = None
    challenger_thresholds: DecisionThresholds | None = None
    mode: str | None = None  # "shadow" | "canary" | None
    share: float = 0.0
    guard: GuardBand = field(default_factory=GuardBand)

    @property
    def canary(self) -> bool:
        return self.mode == CANARY_ARM and self.challenger is not None

    @property
    def shadow(self) -> bool:
        return self.mode == SHADOW_ARM and self.challenger is not None


def canary_mask(card_ids: Sequence[str], share: float) -> np.ndarray:
    """True for the cards in the canary: a stable hash of the card id below ``share``.

    >>> canary_mask(["card-1", "card-1"], 0.5).tolist() == [canary_mask(["card-1"], 0.5)[0]] * 2
    True
    """
    if share <= 0.0:
        return np.zeros(len(card_ids), dtype=bool)
    cut = int(share * 2**64)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(c.encode(), digest_size=8).digest(), "big") < cut for c in card_ids),
        dtype=bool,
        count=len(card_ids),
    )


class ModelRelease:
    """Holds the release being served. Fixed unless replaced (``set_champion``, ``watch``)."""

    def __init__(self, champion: RegisteredModel, thresholds: DecisionThresholds | None = None) -> None:
        self.threshold_override = thresholds
        self.current = ServingRelease(champion, self._thresholds(champion))

    def _thresholds(self, model: RegisteredModel) -> DecisionThresholds:
        return self.threshold_override or model_thresholds(model.metadata)

    def set_champion(self, model: RegisteredModel) -> None:
        self.current = ServingRelease(model, self._thresholds(model))

    def set_thresholds(self, thresholds: DecisionThresholds | None) -> None:
        """Fix every model's thresholds (None: each model's own again)."""
        self.threshold_override = thresholds
        c = self.current
        self.current = ServingRelease(
            c.champion,
            self._thresholds(c.champion),
            c.challenger,
            None if c.challenger is None else self._thresholds(c.challenger),
            c.mode,
            c.share,
            c.guard,
        )

    def observe(self, release: ServingRelease, arm: str, outcomes: Sequence[Outcome], model_s: float) -> None:
        """What one arm decided in a batch (only a registry release judges canaries)."""


class RegistryRelease(ModelRelease):
    """The release as the registry records it, re-read whenever it changes (hot swap).

    ``poll`` is cheap (two ``stat`` calls) and runs on a background thread every ``interval_s``;
    loading happens there too, never on the decision path. A model version that cannot load
    (``ModelLoadError``: corrupt file, other features, NaN or drifted outputs on its golden set)
    is refused once per process: logged with the reason, reported to ``on_refusal`` (the
    scorer counts ``fraud_model_load_refusals_total{reason}``) and never retried, since a
    registered version's files do not change. A refused champion leaves the current champion
    serving; a refused challenger leaves the champion serving alone. At startup, a champion
    that cannot load is replaced by the newest earlier champion (the rollback stack) that can,
    so a restarted scorer serves what its peers kept serving.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        thresholds: DecisionThresholds | None = None,
        on_change: Callable[[ServingRelease], None] | None = None,
        on_rollback: Callable[[str, str], None] | None = None,
        on_refusal: Callable[[str, ModelLoadError], None] | None = None,
    ) -> None:
        self.registry = registry
        self.on_change = on_change
        self.on_rollback = on_rollback
        self.on_refusal = on_refusal
        self.refused: dict[str, ModelLoadError] = {}  # version -> why, for this process's lifetime
        self._guard: CanaryGuard | None = None
        self._guarded: ServingRelease | None = None
        self._stamp = registry.release_stamp()
        super().__init__(self._startup_champion(), thresholds)
        self.current = self._read(self.current.champion)
        self._stop = threading.Event()

    def _refuse(self, version: str, exc: ModelLoadError, role: str, keeps: str) -> None:
        self.refused[version] = exc
        log.error("%s %s refused (%s), %s: %s", role, version, exc.reason, keeps, exc)
        if self.on_refusal is not None:
            self.on_refusal(version, exc)

    def _startup_champion(self) -> RegisteredModel:
        version = self.registry.champion()
        if version is None:
            return self.registry.load()  # ModelLoadError: no champion at all
        try:
            return self.registry.load(version)
        except ModelLoadError as exc:
            first = exc
            self._refuse(version, exc, "champion", "trying the earlier champions")
        for earlier in reversed([v for v in self.registry.champion_stack() if v != version]):
            if earlier in self.refused:
                continue
            try:
                model = self.registry.load(earlier)
            except ModelLoadError as exc:
                self._refuse(earlier, exc, "earlier champion", "trying the one before")
                continue
            log.error("serving %s, the newest earlier champion that loads, instead of %s", earlier, version)
            return model
        raise first

    def _model(self, version: str, loaded: ServingRelease) -> RegisteredModel:
        for model in (loaded.champion, loaded.challenger):
            if model is not None and model.version == version:
                return model  # already loaded: a promotion of the canary costs no reload
        if version in self.refused:
            raise self.refused[version]
        return self.registry.load(version)

    def _read(self, fallback_champion: RegisteredModel) -> ServingRelease:
        loaded = self.current
        champion_version = self.registry.champion()
        champion = fallback_champion
        if champion_version is not None:
            try:
                champion = self._model(champion_version, loaded)
            except ModelLoadError as exc:
                if champion_version not in self.refused:
                    self._refuse(champion_version, exc, "new champion", f"still serving {fallback_champion.version}")
        running = self.registry.challenger()
        if running is None or running["version"] == champion.version:
            return ServingRelease(champion, self._thresholds(champion))
        try:
            challenger = self._model(running["version"], loaded)
        except ModelLoadError as exc:
            if running["version"] not in self.refused:
                self._refuse(running["version"], exc, "challenger", "champion serves alone")
            return ServingRelease(champion, self._thresholds(champion))
        return ServingRelease(
            champion,
            self._thresholds(champion),
            challenger,
            self._thresholds(challenger),
            running["mode"],
            float(running.get("share", 0.0)),
            GuardBand.from_dict(running.get("guard") or {}),
        )

    def poll(self) -> bool:
        """Swap in the registry's release if it changed; True when it did (a change that only
        names refused models leaves the current release in place and returns False)."""
        stamp = self.registry.release_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        release = self._read(self.current.champion)
        if _same(release, self.current):
            return False
        self.current = release
        if self.on_change is not None:
            self.on_change(release)
        return True

    def observe(self, release: ServingRelease, arm: str, outcomes: Sequence[Outcome], model_s: float) -> None:
        if not release.canary or release is not self.current:
            return
        if self._guard is None or self._guarded is not release:
            self._guard, self._guarded = CanaryGuard(release.guard), release
        self._guard.observe(arm, outcomes, model_s)
        reason = self._guard.breach()
        if reason is None:
            return
        assert release.challenger is not None
        log.warning("rolling back canary %s: %s", release.challenger.version, reason)
        self.registry.stop_challenger("rollback", reason, by="canary-guard")
        self._guard = None
        self.poll()  # this process stops routing to the canary now; the others at their next poll
        if self.on_rollback is not None:
            self.on_rollback(release.challenger.version, reason)

    def watch(self, interval_s: float = 1.0) -> threading.Thread:
        return poll_in_background(self.poll, interval_s, self._stop, "release")

    def stop(self) -> None:
        self._stop.set()


def poll_in_background(
    poll: Callable[[], object], interval_s: float, stop: threading.Event, what: str
) -> threading.Thread:
    """Call ``poll`` every ``interval_s`` on a daemon thread until ``stop`` is set; a failing poll
    is logged and retried at the next tick (a bad read must not end the watching)."""

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                poll()
            except Exception:  # noqa: BLE001 - see the docstring
                log.exception("%s poll failed; retrying", what)

    thread = threading.Thread(target=loop, name=f"{what}-watch", daemon=True)
    thread.start()
    return thread


def _same(a: ServingRelease, b: ServingRelease) -> bool:
    """The same models in the same roles: swapping one for the other would change nothing."""

    def version(m: RegisteredModel | None) -> str | None:
        return None if m is None else m.version

    return (a.champion.version, version(a.challenger), a.mode, a.share, a.guard) == (
        b.champion.version,
        version(b.challenger),
        b.mode,
        b.share,
        b.guard,
    )


@dataclass
class _ArmTally:
    decisions: int = 0
    flags: int = 0
    blocks: int = 0
    model_s: float = 0.0

    def add(self, outcomes: Sequence[Outcome], model_s: float) -> None:
        self.decisions += len(outcomes)
        self.flags += sum(o is Outcome.FLAG for o in outcomes)
        self.blocks += sum(o is Outcome.BLOCK for o in outcomes)
        self.model_s += model_s

    def rate(self, n: int) -> float:
        return n / self.decisions if self.decisions else 0.0


class CanaryGuard:
    """Watches one canary and says when it must be rolled back (and why)."""

    def __init__(self, band: GuardBand) -> None:
        self.band = band
        self.champion = _ArmTally()
        self.canary = _ArmTally()

    def observe(self, arm: str, outcomes: Sequence[Outcome], model_s: float) -> None:
        (self.canary if arm == CANARY_ARM else self.champion).add(outcomes, model_s)

    def breach(self) -> str | None:
        """The reason to roll back, or None while the canary stays inside its band."""
        b, ours, theirs = self.band, self.canary, self.champion
        if ours.decisions < b.min_decisions or theirs.decisions < b.min_decisions:
            return None
        for what, ratio, mine, base in (
            ("flag rate", b.max_flag_rate_ratio, ours.rate(ours.flags), theirs.rate(theirs.flags)),
            ("block rate", b.max_block_rate_ratio, ours.rate(ours.blocks), theirs.rate(theirs.blocks)),
        ):
            if mine > base * ratio + b.rate_slack:
                return f"canary {what} {mine:.4f} > {ratio} x champion {base:.4f} + {b.rate_slack}"
        mine, base = ours.model_s / ours.decisions, theirs.model_s / theirs.decisions
        if mine > base * b.max_latency_ratio:
            return f"canary model time {mine * 1e6:.0f} us/payment > {b.max_latency_ratio} x champion {base * 1e6:.0f}"
        return None
