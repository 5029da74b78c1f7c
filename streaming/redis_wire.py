"""Commands to one Redis server framed by hand: the decision path's round trips, the stream's writes.

The decision path sends two commands per batch (the ``MGET`` of states and recorded decisions,
and the script that records the new decisions); the feature stream writes each batch's states as
one pipeline of script calls. Through redis-py 8 each costs ~100-120 µs of CPU
before any data moves (its retry, connection-pool, event and observability layers: ~130 Python
calls per command), which is most of a small batch's fixed cost. Here a command is packed by
hiredis, written with one ``sendall`` and its reply parsed by a ``hiredis.Reader``: ~25 µs.

It keeps redis-py's contract where the decision path relies on it: errors are redis-py's
(``ConnectionError``, ``TimeoutError``, ``ResponseError``: ``STORE_ERRORS`` catch them and the
circuit breaker counts them), ``socket_timeout`` bounds each round trip, and a connection that
failed in any way is closed, never reused (a late reply would otherwise answer the next
command). A command that failed on a connection made before it (the server restarted, an idle
connection was dropped) is sent once more on a new connection; the callers' commands are safe to
repeat (a read, and a first-writer-wins record that recognises its own write).

Each thread has its own connection, so the decide thread's read never holds up the event loop's
shed path, which records its decisions too.

Only a plain TCP server (with optional username/password and db) is framed by hand;
``RedisWire.for_client`` returns None for anything else (TLS, a unix socket, a cluster), and the
store keeps using redis-py there.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import hiredis
import redis

_READ_SIZE = 1 << 16


class RedisWire:
    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.address = (host, port)
        self.db = db
        self.username = username
        self.password = password
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else socket_timeout
        # A connection per thread: the decide thread's read never makes the event loop's shed path
        # (which records its decisions too) wait for it, as redis-py's pool would not either.
        self._local = threading.local()
        self._opened: list[_Connection] = []
        self._opened_lock = threading.Lock()

    @classmethod
    def for_client(cls, client: Any) -> RedisWire | None:
        """A wire to the server ``client`` (a redis-py ``Redis``) talks to, with its credentials and
        timeouts; None where it is not a plain TCP connection (TLS, a unix socket, a cluster)."""
        if not isinstance(client, redis.Redis):
            return None
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        if pool.connection_class is not redis.Connection or "path" in kwargs or kwargs.get("decode_responses"):
            return None
        return cls(
            host=kwargs.get("host", "localhost"),
            port=int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db", 0) or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            socket_timeout=kwargs.get("socket_timeout"),
            connect_timeout=kwargs.get("socket_connect_timeout"),
        )

    def execute(self, *args: Any) -> Any:
        """Send one command and return its reply as hiredis parses it (bytes, int, list, None; a
        status reply such as OK as bytes, where redis-py would make some of them True)."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send the commands in one write and return their replies in order. An error reply is
        raised (the first one) after every reply has been read, so the connection stays in step."""
        payload = b"".join(hiredis.pack_command(args) for args in commands)
        connection = self._connection()
        reused = connection.is_open
        try:
            replies = connection.round_trip(payload, len(commands))
        except redis.ConnectionError:
            if not reused:
                raise
            replies = connection.round_trip(payload, len(commands))  # the old connection was stale: once more
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def close(self) -> None:
        """Close every thread's connection (a later command opens a new one)."""
        with self._opened_lock:
            for connection in self._opened:
                connection.drop()

    def _connection(self) -> _Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = _Connection(self)
            with self._opened_lock:
                self._opened.append(connection)
        return connection


class _Connection:
    """One socket and its reply parser, used by one thread."""

    def __init__(self, wire: RedisWire) -> None:
        self.wire = wire
        self.sock: socket.socket | None = None
        self.reader: hiredis.Reader | None = None
        self.buffer = bytearray(_READ_SIZE)

    @property
    def is_open(self) -> bool:
        return self.sock is not None

    def round_trip(self, payload: bytes, replies: int) -> list[Any]:
        try:
            if self.sock is None:
                self._connect()
            assert self.sock is not None
            self.sock.sendall(payload)
            return [self._read() for _ in range(replies)]
        except TimeoutError as exc:
            self.drop()
            raise redis.TimeoutError(f"Timeout reading from {self._where()}") from exc
        except OSError as exc:
            self.drop()
            raise redis.ConnectionError(f"Error talking to {self._where()}: {exc}") from exc
        except BaseException:
            self.drop()
            raise

    def drop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        self.reader = None

    def _read(self) -> Any:
        assert self.sock is not None and self.reader is not None
        reader, buffer = self.reader, self.buffer
        reply = reader.gets()
        while reply is False:
            n = self.sock.recv_into(buffer)
            if n == 0:
                raise ConnectionResetError("connection closed by the server")
            reader.feed(buffer, 0, n)
            reply = reader.gets()
        return reply

    def _connect(self) -> None:
        wire = self.wire
        sock = socket.create_connection(wire.address, timeout=wire.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(wire.socket_timeout)
        self.sock = sock
        self.reader = hiredis.Reader(replyError=redis.ResponseError, protocolError=redis.InvalidResponse)
        if wire.password is not None:
            auth = (wire.username, wire.password) if wire.username else (wire.password,)
            self._handshake("AUTH", *auth)
        if wire.db:
            self._handshake("SELECT", wire.db)

    def _handshake(self, *args: Any) -> None:
        assert self.sock is not None
        self.sock.sendall(hiredis.pack_command(args))
        reply = self._read()
        if isinstance(reply, redis.ResponseError):
            raise redis.AuthenticationError(str(reply)) if args[0] == "AUTH" else reply

    def _where(self) -> str:
        return f"{self.wire.address[0]}:{self.wire.address[1]}"
