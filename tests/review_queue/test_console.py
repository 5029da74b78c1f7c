"""The reviewer console through Starlette's TestClient, wired as `fraud review --web` wires it
(fraud.lifecycle.review_console) but with no broker configured, so every label stays in the outbox:
authentication and CSRF refuse writes before they touch the store, claims are exclusive between two
logged-in reviewers, and a verdict is committed before the page says "saved"."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from typer.testing import CliRunner

from fraud.cli import app as cli
from fraud.config import Settings
from fraud.lifecycle import open_review_store, review_console
from review_queue import Verdict
from schema import Outcome
from tests.factories import T0
from tests.review_queue.cases import decision

TOKEN = "correct horse battery staple"
TX1, TX2 = "tx-test-000001", "tx-test-000002"


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = Settings(home=tmp_path, review_token=TOKEN, kafka_bootstrap=None)
    with open_review_store(settings) as store:
        store.add_cases([decision(1, 0.9, 50_000), decision(2, 0.75, 1_000)])
        store.record_payments([decision(1), decision(5, outcome=Outcome.APPROVE, seconds=-3600)])
    return settings


@pytest.fixture
def console(settings):
    return review_console(settings)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def logged_in(console, name: str) -> tuple[TestClient, str]:
    client = TestClient(console)
    form = client.get("/login")
    page = client.post("/login", data={"reviewer": name, "token": TOKEN, "csrf": csrf_of(form.text)})
    assert page.status_code == 200 and f">{name}<" in page.text  # followed the redirect to the queue
    return client, csrf_of(page.text)


def scrape(console) -> dict[tuple[str, str | None], float]:
    """The console's /metrics, fetched without logging in: (sample name, verdict label) -> value."""
    reply = TestClient(console).get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, sample.labels.get("verdict")): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def untouched(settings: Settings) -> None:
    with open_review_store(settings) as store:
        assert [(c.transaction_id, c.claimed_by) for c in store.open_cases()] == [(TX1, None), (TX2, None)]
        assert store.labels() == [] and store.counts()["labelled"] == store.counts()["unsure"] == 0


def test_without_a_session_pages_redirect_to_login_and_every_post_is_refused(console, settings):
    client = TestClient(console, follow_redirects=False)
    assert client.get("/queue").headers["location"] == "/login"
    assert client.get(f"/cases/{TX1}").headers["location"] == "/login"
    csrf = csrf_of(client.get("/login").text)  # a pre-login token does not authenticate
    for path, data in [
        (f"/cases/{TX1}/claim", {}),
        (f"/cases/{TX1}/label", {"verdict": "fraud", "note": "x"}),
        (f"/cases/{TX1}/release", {}),
        ("/logout", {}),
    ]:
        assert client.post(path, data={**data, "csrf": csrf}).status_code == 401, path
    untouched(settings)


def test_a_wrong_token_does_not_log_in(console, settings):
    client = TestClient(console, follow_redirects=False)
    form = client.get("/login")
    refused = client.post("/login", data={"reviewer": "mallory", "token": "guess", "csrf": csrf_of(form.text)})
    assert refused.status_code == 401 and "Wrong token" in refused.text
    assert client.post(f"/cases/{TX1}/claim", data={"csrf": csrf_of(form.text)}).status_code == 401
    untouched(settings)


def test_a_post_without_the_sessions_csrf_token_is_refused(console, settings):
    client, csrf = logged_in(console, "alice")
    assert client.post(f"/cases/{TX1}/claim", data={}).status_code == 403
    assert client.post(f"/cases/{TX1}/claim", data={"csrf": csrf[:-2] + "xx"}).status_code == 403
    other, other_csrf = logged_in(console, "bob")  # another session's token is no good either
    assert client.post(f"/cases/{TX1}/label", data={"verdict": "fraud", "csrf": other_csrf}).status_code == 403
    untouched(settings)


def test_two_reviewers_never_hold_the_same_case(console, settings):
    alice, alice_csrf = logged_in(console, "alice")
    bob, bob_csrf = logged_in(console, "bob")
    claimed = alice.post(f"/cases/{TX1}/claim", data={"csrf": alice_csrf})
    assert claimed.status_code == 200 and 'id="save"' in claimed.text  # alice's case page with the label form

    refused = bob.post(f"/cases/{TX1}/claim", data={"csrf": bob_csrf})
    assert refused.status_code == 409 and "claimed by alice" in refused.text and 'id="save"' not in refused.text
    not_his = bob.post(f"/cases/{TX1}/label", data={"verdict": "legitimate", "note": "", "csrf": bob_csrf})
    assert not_his.status_code == 409
    queue = bob.get("/queue").text
    assert re.search(rf'data-tx="{TX1}".*?<td>alice</td>', queue, re.S)
    with open_review_store(settings) as store:
        assert store.get_case(TX1).claimed_by == "alice" and store.labels() == []
    # bob can take the other case meanwhile
    assert bob.post(f"/cases/{TX2}/claim", data={"csrf": bob_csrf}).status_code == 200


def test_claim_label_and_the_case_leaves_the_queue(console, settings):
    def oldest_open_since(seconds_after_t0: int) -> float:
        return (datetime.now(UTC) - T0).total_seconds() - seconds_after_t0

    before = scrape(console)
    assert before[("fraud_review_queue_depth", None)] == 2
    assert abs(before[("fraud_review_oldest_case_age_seconds", None)] - oldest_open_since(1)) < 5  # TX1, T0 + 1 s
    assert all(before[("fraud_review_verdicts_total", v)] == 0 for v in ("fraud", "legitimate", "unsure"))

    alice, csrf = logged_in(console, "alice")
    case = alice.get(f"/cases/{TX1}").text
    assert "9 transactions in 10m" in case  # the rule's reason
    assert "7 payments on this card in the last hour" in case and "+1.250" in case  # the model's reason code
    assert "tx-test-000005" in case and "approve" in case  # the card's recent history
    assert 'id="claim"' in case and 'id="save"' not in case  # claim first

    alice.post(f"/cases/{TX1}/claim", data={"csrf": csrf})
    queue = alice.post(f"/cases/{TX1}/label", data={"verdict": "fraud", "note": "card testing <b>", "csrf": csrf})
    assert queue.status_code == 200
    # No broker is configured: the label is committed and waits in the outbox, and the page says so.
    assert f"saved: {TX1} fraud; publishing retried" in queue.text
    assert f'data-tx="{TX1}"' not in queue.text and f'data-tx="{TX2}"' in queue.text
    with open_review_store(settings) as store:
        (label,) = store.labels()
        assert (label.transaction_id, label.is_fraud, label.author) == (TX1, True, "alice")
        assert label.note == "card testing <b>"
        assert [lb.transaction_id for _, lb in store.unpublished_labels()] == [TX1]
        assert store.get_case(TX1).verdict is Verdict.FRAUD
    closed = alice.get(f"/cases/{TX1}").text
    assert "card testing &lt;b&gt;" in closed  # notes are escaped, not rendered
    after_one = scrape(console)
    assert after_one[("fraud_review_queue_depth", None)] == 1
    assert abs(after_one[("fraud_review_oldest_case_age_seconds", None)] - oldest_open_since(2)) < 5  # TX2 now
    assert after_one[("fraud_review_verdicts_total", "fraud")] == 1

    alice.post(f"/cases/{TX2}/claim", data={"csrf": csrf})
    unsure = alice.post(f"/cases/{TX2}/label", data={"verdict": "unsure", "note": "no answer", "csrf": csrf})
    assert "closed as unsure (no training label)" in unsure.text and "The queue is empty" in unsure.text
    with open_review_store(settings) as store:
        assert len(store.labels()) == 1 and store.get_case(TX2).status == "unsure"
    empty = scrape(console)
    assert empty[("fraud_review_queue_depth", None)] == 0 and empty[("fraud_review_oldest_case_age_seconds", None)] == 0
    verdicts = {v: empty[("fraud_review_verdicts_total", v)] for v in ("fraud", "legitimate", "unsure")}
    assert verdicts == {"fraud": 1, "legitimate": 0, "unsure": 1}


def test_an_abandoned_claim_returns_the_case_to_the_queue(settings):
    console = review_console(settings.model_copy(update={"review_claim_timeout_s": 0.2}))
    alice, alice_csrf = logged_in(console, "alice")
    bob, bob_csrf = logged_in(console, "bob")
    alice.post(f"/cases/{TX1}/claim", data={"csrf": alice_csrf})
    assert bob.post(f"/cases/{TX1}/claim", data={"csrf": bob_csrf}).status_code == 409
    time.sleep(0.3)  # alice walked away: her claim has expired
    assert bob.post(f"/cases/{TX1}/claim", data={"csrf": bob_csrf}).status_code == 200
    assert alice.post(f"/cases/{TX1}/label", data={"verdict": "fraud", "csrf": alice_csrf}).status_code == 409


def test_the_console_refuses_to_start_without_a_token(tmp_path):
    result = CliRunner().invoke(cli, ["review", "--web", "--home", str(tmp_path)], env={"FRAUD_REVIEW_TOKEN": ""})
    assert result.exit_code == 2 and "FRAUD_REVIEW_TOKEN" in result.output


def test_review_without_arguments_prints_help():
    result = CliRunner().invoke(cli, ["review"], env={"COLUMNS": "120"})
    # Like `fraud` alone: help, with click's usage-error code (no command given).
    assert result.exit_code in (0, 2) and "Usage:" in result.output
    assert "--web" in result.output and "intake" in result.output
