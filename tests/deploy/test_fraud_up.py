"""`fraud up`: real broker and Redis with the topics, found by other commands, stopped by Ctrl-C."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

from deploy import EmbeddedRedis
from fraud.processes import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_starts_services_and_stops_them_cleanly(tmp_path, stop_signal):
    env = {"PATH": "/usr/bin:/bin", "FRAUD_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fraud", "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    services_file = tmp_path / "services.json"
    try:
        wait_for(services_file.exists, 60, "services.json")
        services = json.loads(services_file.read_text())
        assert services["kafka_bootstrap"].startswith("127.0.0.1:")
        topics = AdminClient({"bootstrap.servers": services["kafka_bootstrap"]}).list_topics(timeout=10).topics
        assert {"transactions", "decisions", "dead-letter", "labels"} <= set(topics)
        client = redis.Redis.from_url(services["redis_url"], socket_timeout=1)
        assert client.ping()
    finally:
        proc.send_signal(stop_signal)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "Connection refused" not in output, output  # waiting for the broker is not an error to print
    assert not services_file.exists()
    time.sleep(0.2)
    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_embedded_redis_starts_from_a_relative_directory(tmp_path, monkeypatch):
    # `make demo` runs with the default home `var`, a relative path; the server runs with cwd set to it.
    monkeypatch.chdir(tmp_path)
    with EmbeddedRedis(Path("var") / "services") as server:
        assert redis.Redis.from_url(server.url).ping()
