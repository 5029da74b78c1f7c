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

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from streaming.features import MODEL_FEATURES


class ModelLoadError(RuntimeError):
    """A model that must not serve: missing, corrupt, or built for other features."""


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
        tmp = self.root / "champion.tmp"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.root / "champion")
        self.record({"event": "promote", "version": version, **record})

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
        return RegisteredModel(version=version, metadata=metadata, session=session, native_path=folder / "xgboost.ubj")
