"""The reviewer console against hostile use, through Starlette's TestClient wired as `fraud review
--web` wires it: no write without a session and its CSRF token (every POST route, found from the
app's own routing table), notes stored verbatim through parameterised SQL and rendered escaped,
and the login token and session secret never in logs, pages, cookies or reprs."""

from __future__ import annotations

import base64
import json
import logging
import re
import sqlite3

import pytest
from pydantic import SecretStr
from starlette.routing import Route
from starlette.testclient import TestClient

from fraud.config import Settings
from fraud.lifecycle import open_review_store, review_console
from review_queue.console import ConsoleConfig
from tests.review_queue.cases import decision

TOKEN = "tok-6f1d0c8e-never-in-a-log"
SECRET = "sec-91b2a7f4-never-in-a-log"
TX1, TX2 = "tx-test-000001", "tx-test-000002"
NOTE = "<script>alert(1)</script> '); DROP TABLE cases;-- \" OR 1=1 -- {{ 7*7 }}"


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = Settings(home=tmp_path, review_token=TOKEN, review_session_secret=SECRET, kafka_bootstrap=None)
    with open_review_store(settings) as store:
        store.add_cases([decision(1, 0.9, 50_000), decision(2, 0.75, 1_000)])
    return settings


@pytest.fixture
def console(settings):
    return review_console(settings)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def logged_in(console, name: str = "alice") -> tuple[TestClient, str]:
    client = TestClient(console)
    page = client.post("/login", data={"reviewer": name, "token": TOKEN, "csrf": csrf_of(client.get("/login").text)})
    assert page.status_code == 200, page.text
    return client, csrf_of(page.text)


def post_routes(console) -> list[str]:
    """Every POST path but the login, with a case id filled in."""
    paths = [r.path for r in console.routes if isinstance(r, Route) and "POST" in (r.methods or ())]
    assert "/login" in paths and len(paths) >= 5, paths  # the table is what we think it is
    return [p.replace("{transaction_id}", TX1) for p in paths if p != "/login"]


def snapshot(settings: Settings) -> tuple:
    with open_review_store(settings) as store:
        cases = [(c.transaction_id, c.status, c.claimed_by, c.review_note) for c in store.open_cases()]
        return cases, store.labels(), store.counts()


def test_every_post_route_is_refused_without_a_session_and_writes_nothing(console, settings):
    before = snapshot(settings)
    client = TestClient(console, follow_redirects=False)
    pre_login_csrf = csrf_of(client.get("/login").text)
    for path in post_routes(console):
        for data in ({}, {"csrf": pre_login_csrf}, {"csrf": pre_login_csrf, "verdict": "fraud", "note": NOTE}):
            assert client.post(path, data=data).status_code == 401, (path, data)
    # a forged cookie signed with another secret is no session either
    forged = TestClient(review_console(settings.model_copy(update={"review_session_secret": SecretStr("other")})))
    forged.post("/login", data={"reviewer": "eve", "token": TOKEN, "csrf": csrf_of(forged.get("/login").text)})
    client.cookies.update(forged.cookies)
    assert client.post(f"/cases/{TX1}/claim", data={"csrf": pre_login_csrf}).status_code == 401
    assert snapshot(settings) == before


def test_every_post_route_is_refused_without_the_sessions_csrf_token_and_writes_nothing(console, settings):
    alice, csrf = logged_in(console)
    _, bobs = logged_in(console, "bob")
    before = snapshot(settings)
    for path in post_routes(console):
        for token in (None, "", csrf[:-1], csrf + "x", bobs, csrf.upper()):
            data = {"verdict": "fraud", "note": "x"} | ({} if token is None else {"csrf": token})
            assert alice.post(path, data=data).status_code == 403, (path, token)
    assert snapshot(settings) == before
    assert alice.get("/queue").status_code == 200  # still logged in: refused writes do not log out
    # the login form needs its token too
    fresh = TestClient(console, follow_redirects=False)
    assert fresh.post("/login", data={"reviewer": "mallory", "token": TOKEN}).status_code == 403


def test_a_hostile_note_is_stored_verbatim_and_rendered_escaped(console, settings):
    alice, csrf = logged_in(console, "<img src=x onerror=alert(2)>")
    assert "<img src=x" not in alice.get("/queue").text  # the self-declared name is escaped too
    assert alice.post(f"/cases/{TX1}/claim", data={"csrf": csrf}).status_code == 200
    saved = alice.post(f"/cases/{TX1}/label", data={"verdict": "fraud", "note": NOTE, "csrf": csrf})
    assert saved.status_code == 200

    with open_review_store(settings) as store:
        (label,) = store.labels()
        assert label.note == NOTE.strip()  # verbatim: parameterised SQL, nothing interpreted
        assert store.get_case(TX1).review_note == NOTE.strip()
        assert [c.transaction_id for c in store.open_cases()] == [TX2]  # the cases table is all there
    page = alice.get(f"/cases/{TX1}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "&#39;); DROP TABLE cases;--" in page and "{{ 7*7 }}" in page and "49" not in page.split("DROP")[1][:60]
    assert "&lt;img src=x onerror=alert(2)&gt;" in page and "<img" not in page


def test_hostile_case_ids_in_the_path_are_not_found_not_errors(console, settings):
    alice, csrf = logged_in(console)
    for tx in ("x'; DROP TABLE cases;--", "<script>alert(1)</script>", "%00", "..%2F..%2Fetc%2Fpasswd", "é" * 300):
        page = alice.get(f"/cases/{tx}")
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/plain"), tx
        assert alice.post(f"/cases/{tx}/claim", data={"csrf": csrf}).status_code == 404, tx
    with sqlite3.connect(settings.review_db) as db:
        assert db.execute("SELECT COUNT(*) FROM cases").fetchone()[0] == 2


def test_pages_forbid_framing_and_sniffing(console):
    client = TestClient(console)
    for path in ("/login", f"/cases/{TX1}", "/cases/nope"):
        headers = client.get(path).headers
        assert headers["x-frame-options"] == "DENY", path
        assert headers["x-content-type-options"] == "nosniff", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["referrer-policy"] == "no-referrer", path


def test_the_token_and_the_session_secret_never_appear_in_logs_pages_or_cookies(console, settings, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    logging.getLogger().setLevel(logging.DEBUG)
    bodies: list[str] = []
    cookies: list[str] = []

    client = TestClient(console, raise_server_exceptions=False)
    form = client.get("/login")
    bodies.append(form.text)
    wrong = client.post("/login", data={"reviewer": "alice", "token": TOKEN[:-1], "csrf": csrf_of(form.text)})
    bodies.append(wrong.text)
    assert wrong.status_code == 401
    right = client.post("/login", data={"reviewer": "alice", "token": TOKEN, "csrf": csrf_of(form.text)})
    csrf = csrf_of(right.text)
    cookies.extend(client.cookies.values())
    for reply in (
        right,
        client.post(f"/cases/{TX1}/claim", data={"csrf": csrf}),
        client.post(f"/cases/{TX1}/label", data={"verdict": "fraud", "note": "seen", "csrf": csrf}),
        client.post(f"/cases/{TX2}/label", data={"verdict": "nonsense", "csrf": csrf}),
        client.post(f"/cases/{TX2}/claim", data={"csrf": TOKEN}),  # the token where the CSRF goes
        client.get("/metrics"),
        client.get("/cases/nope"),
    ):
        bodies.append(reply.text)
    settings.review_db.write_bytes(b"not a database")  # the store breaks: an error page
    broken = client.get("/queue")
    assert broken.status_code == 500
    bodies.append(broken.text)

    session = cookies[0].split(".")[0]
    decoded = base64.b64decode(session + "=" * (-len(session) % 4)).decode()
    assert json.loads(decoded)["reviewer"] == "alice"  # readable (signed, not encrypted): so no secret in it
    for secret in (TOKEN, SECRET):
        assert secret not in caplog.text
        assert not any(secret in r.getMessage() or secret in repr(r.args) for r in caplog.records)
        assert not any(secret in body for body in bodies)
        assert not any(secret in c or secret in decoded for c in cookies)
        assert secret not in repr(settings) and secret not in str(settings.model_dump())
        assert secret not in repr(ConsoleConfig(token=TOKEN, session_secret=SECRET))
    assert caplog.records, "nothing was logged at all: the capture is not working"
