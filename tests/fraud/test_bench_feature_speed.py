"""The feature-read measurement runs against a real Redis and reports one well-formed row per
batch size. No timing assertions: speed is the benchmark's claim, not a test's."""

import pytest

from fraud.bench.feature_speed import format_feature_reads, measure_feature_reads
from streaming import OnlineFeatureStore
from streaming.offline import OfflineFeatureBuilder
from tests.factories import txn

pytestmark = pytest.mark.integration


def test_every_batch_size_reports_cpu_per_payment(redis_client):
    history = [txn(n, minutes=n, card=f"card-{n % 7}", merchant=f"m-{n % 3}") for n in range(60)]
    builder = OfflineFeatureBuilder()
    for t in history:
        builder.apply(t)
    store = OnlineFeatureStore(redis_client, "speedtest")
    store.write_states(((e, i, s) for (e, i), s in builder.states.items()), newest_ts=history[-1].event_ts)
    upcoming = [txn(100 + n, minutes=60 + n, card=f"card-{n % 9}") for n in range(30)]

    rates = measure_feature_reads(store, upcoming, batch_sizes=(1, 10, 50), seconds_per_case=0.02)

    assert [r.batch_size for r in rates] == [1, 10, 50]
    assert all(r.batches >= 1 and r.compute_us_per_payment > 0 and r.mget_us_per_payment > 0 for r in rates)
    assert len(format_feature_reads(rates).splitlines()) == 4


def test_no_payments_is_a_clear_error(redis_client):
    with pytest.raises(ValueError, match="no payments"):
        measure_feature_reads(OnlineFeatureStore(redis_client), [])
