"""The model registry: versioned ONNX models with their feature list, metrics and drift reference.

Layout on disk (a directory; a later issue can put the same interface over object storage)::

    models/<version>/model.onnx
    models/<version>/xgboost.ubj       # the same model in XGBoost's own format (benchmarks, bulk scoring)
    models/<version>/metadata.json
    champion                 # the version the scorer serves
    promotions.jsonl         # every promote/refuse decision, with both scores

A model is refused at load when its feature list differs from the declaration the running code
computes: serving a model features in the wrong order is a silent disaster, refusing is loud.
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


class ModelLoadError(RuntimeError):
    """A model that must not serve: missing, corrupt, or built for other features."""


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

    def register(self, model_bytes: bytes, metadata: dict[str, Any], native_model: bytes | None = None) -> str:
        """Store a new model version (written to a temp dir, then renamed: never half-written).

        ``native_model``: the same model as XGBoost UBJSON, kept for comparisons with XGBoost's
        own predictor; the decision path serves the ONNX file.
        """
        version = self.next_version()
        final = self.root / "models" / version
        staging = self.root / "models" / f".{version}.tmp"
        staging.mkdir(parents=True, exist_ok=False)
        (staging / "model.onnx").write_bytes(model_bytes)
        if native_model is not None:
            (staging / "xgboost.ubj").write_bytes(native_model)
        meta = {**metadata, "version": version, "registered_at": datetime.now(UTC).isoformat()}
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(staging, final)
        return version

    def champion(self) -> str | None:
        path = self.root / "champion"
        return path.read_text().strip() if path.exists() else None

    def promote(self, version: str, record: dict[str, Any]) -> None:
        """Make ``version`` the served model; the record (scores, reason) goes to the history."""
        if version not in self.versions():
            raise ModelLoadError(f"cannot promote unknown model version {version!r}")
        self._set_champion(version)
        self.record({"event": "promote", "version": version, **record})
        running = self.challenger()
        if running is not None and running["version"] == version:
            (self.root / "challenger.json").unlink(missing_ok=True)

    def rollback(self, reason: str, by: str = "operator") -> str:
        """Serve the champion before the current one again (hot: scorers pick it up by polling)."""
        current = self.champion()
        # Champions form a stack: a promotion pushes, a rollback pops. Rolling back twice goes
        # two versions back, never forward again.
        stack: list[str] = []
        for entry in self.history():
            if entry["event"] == "promote":
                stack.append(entry["version"])
            elif entry["event"] == "rollback" and stack:
                stack.pop()
        if current is None or len(stack) < 2:
            raise ModelLoadError("nothing to roll back to: no earlier champion in the history")
        target = stack[-2]
        self._set_champion(target)
        self.record({"event": "rollback", "version": target, "from": current, "reason": reason, "by": by})
        return target

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
            raise ModelLoadError(f"model {version}: no XGBoost file (registered before they were kept)")
        return path

    def metadata(self, version: str) -> dict[str, Any]:
        return json.loads((self.root / "models" / version / "metadata.json").read_text())

    def load(self, version: str | None = None) -> RegisteredModel:
        """Load a version (default: the champion), refusing one that must not serve."""
        version = version or self.champion()
        if version is None:
            raise ModelLoadError(f"no champion model in {self.root}; run `fraud train` first")
        folder = self.root / "models" / version
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
                f"but this code computes {list(MODEL_FEATURES)}"
            )
        stored_hash = metadata.get("feature_list_hash")
        if stored_hash is not None and stored_hash != feature_list_hash(MODEL_FEATURES):
            raise ModelLoadError(
                f"model {version}: feature list hash {stored_hash} does not match the served features' "
                f"{feature_list_hash(MODEL_FEATURES)} (metadata edited or corrupt)"
            )
        return RegisteredModel(version=version, metadata=metadata, session=session, native_path=folder / "xgboost.ubj")
