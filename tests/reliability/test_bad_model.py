"""Issue 8, item 6: a bad model is refused at load and the running model keeps serving.

Three kinds of bad model, each made the way it could really reach a registry:

* **corrupt**: a registered version whose ``model.onnx`` is truncated afterwards (a bad copy);
* **features**: a version registered with a different feature list in its metadata;
* **golden**: outputs that are not the registered model's. Two cases, honestly labelled:
  ``nan``, a hand-built ONNX graph (onnx.helper) whose probabilities are NaN for every row, put in
  place of a registered version's file with the golden set removed (as a version registered before
  golden sets were kept: the synthetic-row check must catch it; registering it directly is refused,
  see ``test_registering_a_nan_model_is_refused``); ``drift``, a registered version whose file is
  replaced by another valid model, caught because its outputs differ from the golden expectations.

The bad versions are promoted with ``ModelRegistry.promote`` directly, as a tool other than
``fraud models promote`` (which loads the model first and would refuse it) might, so the scorer is
the one that must refuse them.
"""

import functools
import re
import urllib.request
import uuid

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploy import free_port
from fraud.processes import wait_for
from retrain import ModelLoadError, ModelRegistry
from retrain.registry import synthetic_rows
from scoring import ScorerClient, ScorerMetrics
from scoring.release import RegistryRelease
from streaming.features import MODEL_FEATURES
from tests.integration.helpers import SteadyCaller, fraud_env, start


def nan_model() -> bytes:
    """An ONNX graph with the scorer's interface whose fraud probability is 0/0 = NaN for any row."""
    n = len(MODEL_FEATURES)
    zeros = helper.make_tensor("w", TensorProto.FLOAT, [n, 1], [0.0] * n)
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["z"]),  # 0 for every row
        helper.make_node("Div", ["z", "z"], ["p"]),  # NaN
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=[zeros, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _files(root, version):
    return root / "models" / version


RULES = {"good": lambda x: x[:, 0] > 1.0, "newer": lambda x: x[:, 1] > 1.0, "bad": lambda x: x[:, 2] > 0.5}
RULES["other"] = lambda x: x[:, 3] < -0.5


@functools.cache
def tiny_model(rule: str) -> bytes:
    """A small XGBoost model as ONNX, trained once per test session per rule."""
    from retrain.train import TrainingConfig, fit, to_onnx

    x = np.random.default_rng(0).normal(size=(1000, len(MODEL_FEATURES))).astype(np.float32)
    return to_onnx(fit(x, RULES[rule](x).astype(np.int8), TrainingConfig(n_estimators=10)), len(MODEL_FEATURES))


def register_good(root, rule: str = "good") -> str:
    registry = ModelRegistry(root)
    version = registry.register(tiny_model(rule), {"feature_names": list(MODEL_FEATURES)})
    registry.promote(version, {"reason": "test"})
    return version


def make_bad(root, kind: str) -> str:
    """Register a version and break it the way ``kind`` says (module docstring); not promoted."""
    registry = ModelRegistry(root)
    features = list(reversed(MODEL_FEATURES)) if kind == "features" else list(MODEL_FEATURES)
    version = registry.register(tiny_model("bad"), {"feature_names": features})
    model = _files(root, version) / "model.onnx"
    if kind == "corrupt":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif kind == "nan":
        model.write_bytes(nan_model())
        (_files(root, version) / "golden.json").unlink()
    elif kind == "drift":
        model.write_bytes(tiny_model("other"))
    return version


REASON = {"corrupt": "corrupt", "features": "features", "nan": "golden", "drift": "golden"}


@pytest.mark.parametrize("kind", sorted(REASON))
def test_registry_refuses_each_bad_model_with_its_reason(tmp_path, kind):
    register_good(tmp_path)
    bad = make_bad(tmp_path, kind)
    with pytest.raises(ModelLoadError) as refused:
        ModelRegistry(tmp_path).load(bad)
    assert refused.value.reason == REASON[kind]
    assert bad in str(refused.value)


def test_registering_a_nan_model_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="NaN") as refused:
        ModelRegistry(tmp_path).register(nan_model(), {"feature_names": list(MODEL_FEATURES)})
    assert refused.value.reason == "golden"
    assert ModelRegistry(tmp_path).versions() == []


def test_golden_set_holds_evaluation_rows_and_legacy_models_still_load(tmp_path):
    import json

    first = register_good(tmp_path)
    registry = ModelRegistry(tmp_path)
    evaluation = np.random.default_rng(5).normal(size=(500, len(MODEL_FEATURES))).astype(np.float32)
    model_bytes = (_files(tmp_path, first) / "model.onnx").read_bytes()
    second = registry.register(model_bytes, {"feature_names": list(MODEL_FEATURES)}, golden_rows=evaluation)
    golden = json.loads((_files(tmp_path, second) / "golden.json").read_text())
    assert len(golden["rows"]) == 64 and golden["evaluation_rows"] == 48
    np.testing.assert_array_equal(np.asarray(golden["rows"][0], dtype=np.float32), evaluation[0])
    loaded = registry.load(second)
    np.testing.assert_allclose(
        loaded.predict_proba(synthetic_rows()), registry.load(first).predict_proba(synthetic_rows())
    )
    (_files(tmp_path, first) / "golden.json").unlink()  # registered before golden sets were kept
    assert registry.load(first).version == first


def test_registry_release_keeps_serving_and_counts_each_refusal(tmp_path, caplog):
    good = register_good(tmp_path)
    registry = ModelRegistry(tmp_path)
    metrics = ScorerMetrics()
    release = RegistryRelease(registry, on_refusal=lambda _v, exc: metrics.model_load_refusals.labels(exc.reason).inc())
    for kind in ("corrupt", "features", "nan", "drift"):
        bad = make_bad(tmp_path, kind)
        registry.promote(bad, {"reason": "test"})
        assert release.poll() is False and release.current.champion.version == good
        assert release.poll() is False  # refused once, not reloaded at every poll
        registry._write_json("challenger.json", {"version": bad, "mode": "canary", "share": 0.5, "guard": {}})
        assert release.poll() is False and release.current.challenger is None
        (registry.root / "challenger.json").unlink()
    counts = {
        r: metrics.registry.get_sample_value("fraud_model_load_refusals_total", {"reason": r}) for r in REASON.values()
    }
    assert counts == {"corrupt": 1.0, "features": 1.0, "golden": 2.0}
    assert "refused (features)" in caplog.text and "still serving " + good in caplog.text
    # a restarted scorer falls back to the newest earlier champion that loads
    restarted = RegistryRelease(registry)
    assert restarted.current.champion.version == good and len(restarted.refused) == 4


def _more(callers, seen, n=20):
    return all(len(c.answers) > before + n for c, before in zip(callers, seen, strict=True))


def refusals(port) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    found = re.findall(r'^fraud_model_load_refusals_total\{reason="([^"]+)"\} (\S+)$', text, re.M)
    return {reason: float(n) for reason, n in found}


@pytest.mark.integration
def test_a_serving_scorer_refuses_bad_promotions_under_load_and_keeps_the_previous_model(
    kafka_bootstrap, redis_url, topics, tmp_path
):
    root = tmp_path / "registry"
    good = register_good(root)
    registry = ModelRegistry(root)
    port, metrics_port = free_port(), free_port()
    env = fraud_env(
        kafka_bootstrap,
        redis_url,
        topics,
        tmp_path,
        FRAUD_GRPC_PORT=str(port),
        FRAUD_METRICS_PORT=str(metrics_port),
        FRAUD_KEY_PREFIX=f"bad-{uuid.uuid4().hex[:6]}",
        FRAUD_RELEASE_POLL_S="0.1",
    )
    scorer = start("serve", ["serve"], env, tmp_path)
    callers: list[SteadyCaller] = []
    expected: dict[str, float] = {}
    try:
        ScorerClient(f"127.0.0.1:{port}").wait_ready(60)
        callers = [SteadyCaller(f"127.0.0.1:{port}", w, lambda _s, _l, d: d.model_version, cards=53) for w in range(2)]
        for c in callers:
            c.start()
        wait_for(lambda: all(len(c.answers) > 20 for c in callers), 20, "decisions", alive=scorer.check_alive)
        for kind in ("corrupt", "features", "nan", "drift"):
            bad = make_bad(root, kind)
            registry.promote(bad, {"reason": f"a {kind} model reaches the registry"})
            expected[REASON[kind]] = expected.get(REASON[kind], 0.0) + 1
            wait_for(lambda: refusals(metrics_port) == expected, 10, f"the {kind} refusal", alive=scorer.check_alive)
            seen = [len(c.answers) for c in callers]
            wait_for(lambda seen=seen: _more(callers, seen), 10, "decisions after it", alive=scorer.check_alive)
        canary = make_bad(root, "corrupt")  # a challenger that cannot load: the champion serves alone
        registry._write_json("challenger.json", {"version": canary, "mode": "canary", "share": 0.5, "guard": {}})
        expected["corrupt"] += 1
        wait_for(lambda: refusals(metrics_port) == expected, 10, "the canary refusal", alive=scorer.check_alive)
        (root / "challenger.json").unlink()
        # still following the registry: a good promotion after the refusals is applied
        newer = register_good(root, "newer")
        wait_for(lambda: all(c.answers[-3:] == [newer] * 3 for c in callers), 10, "a good promotion applied")
    finally:
        for c in callers:
            c.halt.set()
            c.join(10)
        scorer.stop()
    versions = [v for c in callers for v in c.answers]
    assert [e for c in callers for e in c.errors] == []
    assert set(versions) == {good, newer}  # no decision ever came from a bad model
    assert versions.count(good) > 200
    log = scorer.log_path.read_text()
    for reason in ("corrupt", "features", "golden"):
        assert f"refused ({reason}), still serving {good}" in log
    assert "outputs NaN or infinity" in log and "differ from those recorded at registration" in log
    assert "challenger " + canary + " refused (corrupt), champion serves alone" in log
