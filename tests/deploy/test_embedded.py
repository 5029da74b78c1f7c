"""Embedded servers: they go when the process that started them goes."""

import signal
import subprocess
import sys

import redis

from fraud.processes import wait_for


def test_an_embedded_server_stops_when_the_process_that_started_it_is_killed(tmp_path):
    # A test run killed mid-way must not leave servers behind on the machine.
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from deploy import EmbeddedRedis; "
            f"s = EmbeddedRedis({str(tmp_path)!r}).start(); print(s.port, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(starter.stdout.readline())
    client = redis.Redis(port=port, socket_timeout=1)
    assert client.ping()
    starter.send_signal(signal.SIGKILL)
    starter.wait()

    def gone() -> bool:
        try:
            redis.Redis(port=port, socket_timeout=0.5).ping()
            return False
        except redis.ConnectionError:
            return True

    wait_for(gone, 10, "the orphaned redis-server to stop")
