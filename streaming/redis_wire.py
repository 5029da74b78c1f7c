"""One command at a time to one Redis server, framed by hand: the decision path's round trips.

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
        self._sock: socket.socket | None = None
        self._reader: hiredis.Reader | None = None
        self._buffer = bytearray(_READ_SIZE)
        self._lock = threading.Lock()  # one command in flight: the decide thread and the shed path share it

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
        with self._lock:
            reused = self._sock is not None
            try:
                replies = self._round_trip(payload, len(commands))
            except redis.ConnectionError:
                if not reused:
                    raise
                replies = self._round_trip(payload, len(commands))  # the old connection was stale: once more
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _round_trip(self, payload: bytes, replies: int) -> list[Any]:
        try:
            if self._sock is None:
                self._connect()
            assert self._sock is not None
            self._sock.sendall(payload)
            out = [self._read() for _ in range(replies)]
        except TimeoutError as exc:
            self._drop()
            raise redis.TimeoutError(f"Timeout reading from {self._where()}") from exc
        except OSError as exc:
            self._drop()
            raise redis.ConnectionError(f"Error talking to {self._where()}: {exc}") from exc
        except BaseException:
            self._drop()
            raise
        return out

    def _read(self) -> Any:
        assert self._sock is not None and self._reader is not None
        reader, buffer = self._reader, self._buffer
        reply = reader.gets()
        while reply is False:
            n = self._sock.recv_into(buffer)
            if n == 0:
                raise ConnectionResetError("connection closed by the server")
            reader.feed(buffer, 0, n)
            reply = reader.gets()
        return reply

    def _connect(self) -> None:
        sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.socket_timeout)
        self._sock = sock
        self._reader = hiredis.Reader(replyError=redis.ResponseError, protocolError=redis.InvalidResponse)
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            self._handshake("AUTH", *auth)
        if self.db:
            self._handshake("SELECT", self.db)

    def _handshake(self, *args: Any) -> None:
        assert self._sock is not None
        self._sock.sendall(hiredis.pack_command(args))
        reply = self._read()
        if isinstance(reply, redis.ResponseError):
            raise redis.AuthenticationError(str(reply)) if args[0] == "AUTH" else reply

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._reader = None

    def _where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"
