"""The model registry: versioned ONNX models with their feature list, metrics and drift reference.

Layout on disk (a directory; a later issue can put the same interface over object storage)::

    models/<version>/model.onnx
    models/<version>/xgboost.ubj       # the same model in XGBoost's own format (benchmarks, bulk scoring)
    models/<version>/metadata.json
    models/<version>/golden.json       # 64 feature rows and the probabilities the model gave them at registration
    champion                 # the version the scorer serves
    promotions.jsonl         # every promote/refuse decision, with both scores

A model is refused at load (``ModelLoadError`` with a ``reason``) when:

* ``corrupt``: its files cannot be read or onnxruntime cannot build a session from them;
* ``features``: its feature list differs from the declaration the running code computes (serving a
  model features in the wrong order is a silent disaster, refusing is loud);
* ``golden``: on its golden set it outputs NaN or infinity, a probability outside [0, 1], or
  probabilities that differ from those recorded at registration by more than the tolerance (the
  file is not the model that was registered, or this runtime computes it differently).

The golden set is written at registration: up to 48 rows of the model's evaluation slice (when the
caller passes them) and synthetic rows (``synthetic_rows``: new cards with empty history, busy
cards, extreme amounts) up to 64, with the model's probabilities on them. A model registered
before golden sets were kept is checked on the synthetic rows: finite probabilities in [0, 1].
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from schema import DecisionThresholds, Transaction
from streaming.features import MODEL_FEATURES

GOLDEN_ROWS = 64
GOLDEN_FROM_EVALUATION = 48  # the rest synthetic, so edge cases (empty history, huge amounts) are always in
GOLDEN_TOLERANCE = 1e-5  # absolute, on probabilities; onnxruntime on one CPU is far closer than this

# ModelLoadError.reason values (the label of fraud_model_load_refusals_total)
CORRUPT, FEATURES, GOLDEN, MISSING = "corrupt", "features", "golden", "missing"


class ModelLoadError(RuntimeError):
    """A model that must not serve; ``reason`` says why: corrupt, features, golden or missing."""

    def __init__(self, message: str, reason: str = CORRUPT) -> None:
        super().__init__(message)
        self.reason = reason


def feature_list_hash(names: Sequence[str]) -> str:
    """A short fingerprint of an ordered feature list: same names, same order, same hash."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def data_fingerprint(transactions: Sequence[Transaction], labels: np.ndarray) -> str:
    """A fingerprint of the rows and labels a model was trained and evaluated on.

    Two models with the same fingerprint saw the same payments with the same verdicts, so a
    difference between them is the training configuration, not the data.
    """
    digest = hashlib.sha256()
    for t in transactions:
        digest.update(f"{t.transaction_id}|{t.event_ts}\n".encode())
    digest.update(np.ascontiguousarray(labels, dtype=np.int8).tobytes())
    return digest.hexdigest()[:16]


def model_thresholds(metadata: dict[str, Any]) -> DecisionThresholds:
    """The operating thresholds chosen for this model at training (defaults for older models)."""
    point = metadata.get("operating_point")
    if not point:
        return DecisionThresholds()
    return DecisionThresholds(flag=point["flag"], block=point["block"])


@dataclass
class RegisteredModel:
    """A loaded, ready-to-score model."""

    version: str
    metadata: dict[str, Any]
    session: ort.InferenceSession
    # The same model in XGBoost's format, for reason codes (scoring.reasons); None or a path that
    # does not exist when the version was registered without it: decisions are then made without reasons.
    native_path: Path | None = None

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Fraud probability per row of a float32 matrix in ``MODEL_FEATURES`` order."""
        if features.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        probabilities = self.session.run(["probabilities"], {"input": features.astype(np.float32, copy=False)})[0]
        return probabilities[:, 1]


def synthetic_rows(n: int = GOLDEN_ROWS) -> np.ndarray:
    """Deterministic, plausible feature rows in ``MODEL_FEATURES`` order (float32).

    The first rows are edge cases every model meets in production: a payment on a card, customer,
    merchant and device with no history at all (zeros), and one with very large amounts and counts.
    The rest are drawn from a fixed seed, per column kind (counts, amounts, flags, rates)."""
    rng = np.random.default_rng(20260105)
    columns = []
    for name in MODEL_FEATURES:
        if name.startswith("is_"):
            col = rng.integers(0, 2, n)
        elif name == "hour_of_day":
            col = rng.integers(0, 24, n)
        elif name == "merchant_category_code":
            col = rng.integers(-1, 12, n)
        elif "fraud_rate" in name:
            col = rng.beta(0.5, 50.0, n)
        elif "count" in name or "distinct" in name:
            col = rng.poisson(rng.choice([0.5, 3.0, 20.0], n))
        elif "seconds_since" in name:
            col = rng.exponential(3600.0, n)
        elif "to_mean" in name:
            col = rng.lognormal(0.0, 0.7, n)
        else:  # amounts in major units
            col = rng.lognormal(3.5, 1.4, n)
        columns.append(col.astype(np.float64))
    rows = np.stack(columns, axis=1)
    rows[0] = 0.0  # no history anywhere
    rows[0, MODEL_FEATURES.index("amount")] = 25.0
    if n > 1:
        rows[1] = np.where(rows[1] > 0, rows[1] * 1000.0, 1000.0)  # extreme amounts and counts
        for name in MODEL_FEATURES:
            if name.startswith("is_") or "fraud_rate" in name:
                rows[1, MODEL_FEATURES.index(name)] = 1.0
    return rows.astype(np.float32)


def _probabilities(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    return session.run(["probabilities"], {"input": rows.astype(np.float32, copy=False)})[0][:, 1]


def _output_problem(probabilities: np.ndarray) -> str | None:
    """What is wrong with a model's probabilities on its golden rows (None: nothing)."""
    bad = ~np.isfinite(probabilities)
    if bad.any():
        return f"outputs NaN or infinity on {int(bad.sum())} of {len(probabilities)} golden rows"
    outside = (probabilities < 0.0) | (probabilities > 1.0)
    if outside.any():
        worst = probabilities[outside][np.argmax(np.abs(probabilities[outside] - 0.5))]
        return f"outputs probabilities outside [0, 1] on {int(outside.sum())} golden rows (e.g. {worst:g})"
    return None


def _session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One decision path per core: intra-op threads would fight the gRPC loop for the same cores.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[str]:
        models = self.root / "models"
        return sorted(p.name for p in models.iterdir() if (p / "metadata.json").exists()) if models.exists() else []

    def next_version(self) -> str:
        numbers = [int(v.split("-")[-1]) for v in self.versions()]
        return f"xgb-{max(numbers, default=0) + 1:04d}"

    def register(
        self,
        model_bytes: bytes,
        metadata: dict[str, Any],
        native_model: bytes | None = None,
        golden_rows: np.ndarray | None = None,
    ) -> str:
        """Store a new model version (written to a temp dir, then renamed: never half-written).

        ``native_model``: the same model as XGBoost UBJSON, kept for comparisons with XGBoost's
        own predictor; the decision path serves the ONNX file. ``golden_rows``: feature rows of the
        model's evaluation slice, the first 48 of which join its golden set (module docstring).
        A model that cannot be loaded, or outputs NaN, infinity or a value outside [0, 1] on its
        golden set, is refused here (ModelLoadError) and not registered.
        """
        golden = self._golden_set(model_bytes, golden_rows)
        version = self.next_version()
        final = self.root / "models" / version
        staging = self.root / "models" / f".{version}.tmp"
        staging.mkdir(parents=True, exist_ok=False)
        (staging / "model.onnx").write_bytes(model_bytes)
        if native_model is not None:
            (staging / "xgboost.ubj").write_bytes(native_model)
        (staging / "golden.json").write_text(json.dumps(golden))
        meta = {**metadata, "version": version, "registered_at": datetime.now(UTC).isoformat()}
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(staging, final)
        return version

    @staticmethod
    def _golden_set(model_bytes: bytes, evaluation_rows: np.ndarray | None) -> dict[str, Any]:
        try:
            session = _session(model_bytes)
        except Exception as exc:  # onnxruntime raises its own types for corrupt graphs
            raise ModelLoadError(f"refusing to register a corrupt ONNX model: {exc}", CORRUPT) from exc
        taken = np.empty((0, len(MODEL_FEATURES)), dtype=np.float32)
        if evaluation_rows is not None and len(evaluation_rows):
            picks = np.linspace(0, len(evaluation_rows) - 1, min(GOLDEN_FROM_EVALUATION, len(evaluation_rows)))
            taken = np.asarray(evaluation_rows, dtype=np.float32)[picks.astype(int)]
        rows = np.concatenate([taken, synthetic_rows(GOLDEN_ROWS - len(taken))])
        try:
            expected = _probabilities(session, rows)
        except Exception as exc:  # noqa: BLE001 - a graph that cannot score our rows must not register
            raise ModelLoadError(
                f"refusing to register a model that cannot score feature rows: {exc}", CORRUPT
            ) from exc
        problem = _output_problem(expected)
        if problem is not None:
            raise ModelLoadError(f"refusing to register a model that {problem}", GOLDEN)
        return {
            "rows": rows.tolist(),  # float32 -> float -> JSON round-trips exactly
            "expected": expected.astype(np.float64).tolist(),
            "evaluation_rows": len(taken),
            "tolerance": GOLDEN_TOLERANCE,
        }

    def champion(self) -> str | None:
        path = self.root / "champion"
        return path.read_text().strip() if path.exists() else None

    def promote(self, version: str, record: dict[str, Any]) -> None:
        """Make ``version`` the served model; the record (scores, reason) goes to the history."""
        if version not in self.versions():
            raise ModelLoadError(f"cannot promote unknown model version {version!r}", MISSING)
        self._set_champion(version)
        self.record({"event": "promote", "version": version, **record})
        running = self.challenger()
        if running is not None and running["version"] == version:
            (self.root / "challenger.json").unlink(missing_ok=True)

    def rollback(self, reason: str, by: str = "operator") -> str:
        """Serve the champion before the current one again (hot: scorers pick it up by polling)."""
        current = self.champion()
        stack = self.champion_stack()
        if current is None or len(stack) < 2:
            raise ModelLoadError("nothing to roll back to: no earlier champion in the history", MISSING)
        target = stack[-2]
        self._set_champion(target)
        self.record({"event": "rollback", "version": target, "from": current, "reason": reason, "by": by})
        return target

    def champion_stack(self) -> list[str]:
        """The champions in promotion order, the current one last (what a rollback returns to).

        Champions form a stack: a promotion pushes, a rollback pops. Rolling back twice goes
        two versions back, never forward again."""
        stack: list[str] = []
        for entry in self.history():
            if entry["event"] == "promote":
                stack.append(entry["version"])
            elif entry["event"] == "rollback" and stack:
                stack.pop()
        return stack

    def challenger(self) -> dict[str, Any] | None:
        """The running release experiment: version, mode (shadow | canary), share, guard; or None."""
        path = self.root / "challenger.json"
        return json.loads(path.read_text()) if path.exists() else None

    def start_challenger(
        self, version: str, mode: str, share: float = 0.0, guard: dict[str, float] | None = None, by: str = "operator"
    ) -> None:
        """Run ``version`` beside the champion: ``shadow`` (scored, never acted on) or ``canary``
        (decides ``share`` of cards). One challenger at a time; starting one replaces the last."""
        if mode not in ("shadow", "canary"):
            raise ValueError(f"mode: expected shadow or canary, got {mode!r}")
        if mode == "canary" and not 0.0 < share < 1.0:
            raise ValueError(f"share: a canary takes a share of cards strictly between 0 and 1, got {share}")
        if version == self.champion():
            raise ValueError(f"{version} is the champion already")
        self.load(version)  # refuse now, not in every scorer, a model that cannot serve
        entry = {"version": version, "mode": mode, "share": share if mode == "canary" else 0.0, "guard": guard or {}}
        self._write_json("challenger.json", {**entry, "started_at": datetime.now(UTC).isoformat()})
        self.record({"event": f"start_{mode}", **entry, "by": by})

    def stop_challenger(self, event: str, reason: str, by: str = "operator") -> dict[str, Any] | None:
        """End the experiment (``event``: stop | rollback); returns what was running."""
        running = self.challenger()
        if running is None:
            return None
        (self.root / "challenger.json").unlink(missing_ok=True)
        self.record(
            {"event": event, "version": running["version"], "mode": running["mode"], "reason": reason, "by": by}
        )
        return running

    def release_stamp(self) -> tuple[float, ...]:
        """Changes whenever the champion or the challenger changes: cheap to poll."""
        stamps = []
        for name in ("champion", "challenger.json"):
            try:
                stamps.append((self.root / name).stat().st_mtime_ns)
            except FileNotFoundError:
                stamps.append(0)
        return tuple(stamps)

    def _set_champion(self, version: str) -> None:
        tmp = self.root / "champion.tmp"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.root / "champion")  # readers see the old champion or the new, never half

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.root / name)  # readers see the old file or the new one, never half

    def record(self, entry: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "promotions.jsonl").open("a") as fh:
            fh.write(json.dumps({"at": datetime.now(UTC).isoformat(), **entry}, sort_keys=True) + "\n")

    def history(self) -> list[dict[str, Any]]:
        path = self.root / "promotions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def native_model_path(self, version: str) -> Path:
        """The XGBoost file of ``version`` (ModelLoadError when it was registered without one)."""
        path = self.root / "models" / version / "xgboost.ubj"
        if not path.exists():
            raise ModelLoadError(f"model {version}: no XGBoost file (registered before they were kept)", MISSING)
        return path

    def metadata(self, version: str) -> dict[str, Any]:
        return json.loads((self.root / "models" / version / "metadata.json").read_text())

    def load(self, version: str | None = None) -> RegisteredModel:
        """Load a version (default: the champion), refusing one that must not serve."""
        version = version or self.champion()
        if version is None:
            raise ModelLoadError(f"no champion model in {self.root}; run `fraud train` first", MISSING)
        folder = self.root / "models" / version
        if not (folder / "metadata.json").exists():
            raise ModelLoadError(f"model {version}: no such version in {self.root}", MISSING)
        try:
            metadata = json.loads((folder / "metadata.json").read_text())
            session = _session((folder / "model.onnx").read_bytes())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model {version}: cannot load: {exc}") from exc
        except Exception as exc:  # onnxruntime raises its own types for corrupt graphs
            raise ModelLoadError(f"model {version}: corrupt ONNX: {exc}") from exc
        if tuple(metadata.get("feature_names", ())) != MODEL_FEATURES:
            raise ModelLoadError(
                f"model {version} was trained on features {metadata.get('feature_names')}, "
                f"but this code computes {list(MODEL_FEATURES)}",
                FEATURES,
            )
        stored_hash = metadata.get("feature_list_hash")
        if stored_hash is not None and stored_hash != feature_list_hash(MODEL_FEATURES):
            raise ModelLoadError(
                f"model {version}: feature list hash {stored_hash} does not match the served features' "
                f"{feature_list_hash(MODEL_FEATURES)} (metadata edited or corrupt)",
                FEATURES,
            )
        self._check_golden(version, folder, session)
        return RegisteredModel(version=version, metadata=metadata, session=session, native_path=folder / "xgboost.ubj")

    @staticmethod
    def _check_golden(version: str, folder: Path, session: ort.InferenceSession) -> None:
        """Refuse (reason ``golden``) a model whose outputs on its golden set are not finite
        probabilities or differ from those recorded at registration (synthetic rows, finite
        probabilities only, for a model registered before golden sets were kept)."""
        width = session.get_inputs()[0].shape[-1]
        if isinstance(width, int) and width != len(MODEL_FEATURES):
            raise ModelLoadError(
                f"model {version}: its graph takes {width} features, this code computes {len(MODEL_FEATURES)}", FEATURES
            )
        path = folder / "golden.json"
        golden: dict[str, Any] | None = None
        if path.exists():
            try:
                golden = json.loads(path.read_text())
                rows = np.asarray(golden["rows"], dtype=np.float32)
                expected = np.asarray(golden["expected"], dtype=np.float64)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelLoadError(f"model {version}: unreadable golden set: {exc}", CORRUPT) from exc
        else:
            rows, expected = synthetic_rows(), None
        try:
            got = _probabilities(session, rows).astype(np.float64)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
            raise ModelLoadError(f"model {version}: cannot score its golden rows: {exc}", CORRUPT) from exc
        problem = _output_problem(got)
        if problem is not None:
            raise ModelLoadError(f"model {version} {problem}", GOLDEN)
        if golden is not None and expected is not None:
            if got.shape != expected.shape:
                raise ModelLoadError(
                    f"model {version}: golden set has {len(expected)} expectations, {len(got)} outputs", GOLDEN
                )
            diff = np.abs(got - expected)
            tolerance = float(golden.get("tolerance", GOLDEN_TOLERANCE))
            if diff.max(initial=0.0) > tolerance:
                raise ModelLoadError(
                    f"model {version}: probabilities differ from those recorded at registration on "
                    f"{int((diff > tolerance).sum())} of {len(got)} golden rows "
                    f"(max {diff.max():.3g} > {tolerance:g}): the file is not the model that was registered",
                    GOLDEN,
                )
