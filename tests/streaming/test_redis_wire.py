"""The decision path's hand-framed Redis commands (streaming.redis_wire) against a real server:
the same replies as redis-py, redis-py's errors, a bounded wait, and recovery by itself."""

import threading
import time

import pytest
import redis

from deploy import EmbeddedRedis
from streaming import OnlineFeatureStore
from streaming.redis_wire import RedisWire
from tests.factories import txn

pytestmark = pytest.mark.integration


def test_replies_are_redis_pys(redis_client):
    redis_client.mset({"a": b"\x00state-a", "b": b"B" * 100_000})  # a reply larger than one read
    wire = RedisWire.for_client(redis_client)
    assert wire is not None
    assert wire.execute("MGET", "a", "missing", "b") == redis_client.mget(["a", "missing", "b"])
    assert wire.execute("INCRBY", "n", 5) == 5
    script = "return {KEYS[1], false, tonumber(ARGV[1]) + 1}"
    assert wire.execute("EVAL", script, 1, "k", 41) == redis_client.eval(script, 1, "k", 41) == [b"k", None, 42]


def test_an_error_reply_is_a_response_error_and_the_connection_goes_on(redis_client):
    wire = RedisWire.for_client(redis_client)
    redis_client.set("text", "not a number")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        wire.execute("INCR", "text")
    assert wire.execute("GET", "text") == b"not a number"


def test_a_killed_connection_is_replaced_once_and_a_down_server_is_a_connection_error(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url, socket_timeout=0.5)
        wire = RedisWire.for_client(client)
        client.set("k", "v")
        assert wire.execute("GET", "k") == b"v"
        client.client_kill_filter(_type="normal", skipme=True)  # the wire's connection is gone
        assert wire.execute("GET", "k") == b"v"  # a new connection, no error
        port = server.port
    down = RedisWire("127.0.0.1", port, socket_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        down.execute("GET", "k")


def test_a_hung_server_is_a_timeout_within_the_socket_timeout_then_it_recovers(redis_url, redis_client):
    wire = RedisWire.for_client(redis.Redis.from_url(redis_url, socket_timeout=0.2))
    assert wire.execute("PING") == b"PONG"
    redis_client.client_pause(800)  # every client's commands wait 0.8 s
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        wire.execute("GET", "k")
    assert time.monotonic() - started < 0.6
    time.sleep(0.8)  # the pause ends
    assert wire.execute("PING") == b"PONG"


def test_credentials_and_database_come_from_the_client(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        redis.Redis.from_url(server.url).config_set("requirepass", "s3cret")
        client = redis.Redis(host="127.0.0.1", port=server.port, db=2, password="s3cret")
        client.set("k", "in db 2")
        assert RedisWire.for_client(client).execute("GET", "k") == b"in db 2"
        wrong = RedisWire("127.0.0.1", server.port, password="wrong", socket_timeout=1.0)
        with pytest.raises(redis.AuthenticationError):
            wrong.execute("GET", "k")


def test_only_a_plain_tcp_client_is_framed_by_hand(redis_url):
    assert RedisWire.for_client(redis.Redis.from_url(redis_url)) is not None
    assert RedisWire.for_client(redis.Redis.from_url(redis_url, decode_responses=True)) is None
    assert RedisWire.for_client(redis.Redis(unix_socket_path="/tmp/none.sock")) is None
    assert RedisWire.for_client(redis.Redis(ssl=True)) is None


def test_a_record_sent_again_recognises_its_own_write(redis_client):
    store = OnlineFeatureStore(redis_client, prefix="wire-test")
    t1, t2 = txn(1), txn(2)
    assert store.record_decisions([(t1, b"ours")], 60) == [None]
    # the same command again, as after a connection that failed once the server had run it
    assert store.record_decisions([(t1, b"ours"), (t2, b"new")], 60) == [None, None]
    assert store.record_decisions([(t1, b"theirs")], 60) == [b"ours"]


def test_a_pipeline_answers_in_order_and_raises_the_first_error_after_reading_every_reply(redis_client):
    wire = RedisWire.for_client(redis_client)
    redis_client.set("text", "not a number")
    assert wire.pipeline([("SET", "a", 1), ("INCR", "a"), ("GET", "a")]) == [b"OK", 2, b"2"]
    with pytest.raises(redis.ResponseError, match="not an integer"):
        wire.pipeline([("INCR", "a"), ("INCR", "text"), ("INCR", "a")])
    assert wire.execute("GET", "a") == b"4"  # both INCRs of "a" ran, and the replies stayed in step


def test_the_streams_writes_on_a_server_without_its_scripts_count_progress_once(redis_client):
    from streaming.windows import LAYOUTS, EntityState, apply_transaction
    from tests.factories import txn

    state = EntityState()
    apply_transaction(state, LAYOUTS["card"], txn(1))
    store = OnlineFeatureStore(redis_client, prefix="wire-write")
    redis_client.script_flush()  # as on a new or restarted server
    assert store.write_states([("card", "card-000001", state)], 1000.0, transactions=5) == 1
    store.write_states([("card", "card-000001", state)], 2000.0, transactions=2)
    assert store.counts()["events"] == 7 and store.watermark() == 2000.0
    assert redis_client.get(store.key("card", "card-000001")) is not None


def test_a_threads_slow_command_does_not_hold_up_another_threads(redis_url):
    wire = RedisWire.for_client(redis.Redis.from_url(redis_url, socket_timeout=3.0))
    blocked = threading.Thread(target=wire.execute, args=("BLPOP", "wire-test-empty-list", 1))
    blocked.start()
    time.sleep(0.2)  # the other thread is now waiting in BLPOP on its connection
    started = time.monotonic()
    assert wire.execute("PING") == b"PONG"
    assert time.monotonic() - started < 0.4
    blocked.join()
