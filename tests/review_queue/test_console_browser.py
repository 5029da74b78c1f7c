"""The reviewer console end to end in headless Chromium: a real uvicorn server on a free port and the
real broker. Log in, open the queue, open the top case, claim it, label it fraud with a note, see it
leave the queue; the label is in the store and arrived on `labels`.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them). Without them this test
fails, it does not skip: a console nobody can click through is not tested."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from deploy import free_port, read_topic
from fraud.config import Settings
from fraud.lifecycle import open_review_store, review_console
from schema import LabelSource, decode_label
from tests.review_queue.cases import decision

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOKEN = "e2e-review-token"
TOP, OTHER = "tx-test-000001", "tx-test-000002"


@pytest.fixture
def settings(tmp_path, kafka_bootstrap, topics) -> Settings:
    suffix = topics.labels.removeprefix("labels")
    settings = Settings(home=tmp_path, kafka_bootstrap=kafka_bootstrap, topic_suffix=suffix, review_token=TOKEN)
    with open_review_store(settings) as store:
        store.add_cases([decision(1, 0.95, 80_000), decision(2, 0.72, 1_500)])
        store.record_payments([decision(1), decision(2)])
    return settings


@pytest.fixture
def console_url(settings) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(review_console(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the console did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser(tmp_path: Path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: install Debian's chromium and chromium-driver "
            "(`apt-get install -y chromium chromium-driver`; `make test` does it)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def test_a_reviewer_claims_and_labels_the_top_case_in_a_browser(settings, console_url, browser, topics):
    from selenium.webdriver.common.by import By

    browser.get(f"{console_url}/queue")
    assert browser.current_url.endswith("/login")  # no session: sent to log in
    browser.find_element(By.ID, "reviewer").send_keys("alice")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()

    rows = browser.find_elements(By.CSS_SELECTOR, "#queue tbody tr[data-tx]")
    assert [r.get_attribute("data-tx") for r in rows] == [TOP, OTHER]  # priority order
    rows[0].find_element(By.LINK_TEXT, TOP).click()
    assert "9 transactions in 10m" in browser.find_element(By.ID, "rules").text
    assert "7 payments on this card" in browser.find_element(By.ID, "reasons").text
    assert OTHER in browser.find_element(By.ID, "history").text

    browser.find_element(By.ID, "claim").click()
    browser.find_element(By.ID, "verdict-fraud").click()
    browser.find_element(By.ID, "note").send_keys("burst of small online payments")
    browser.find_element(By.ID, "save").click()

    flash = browser.find_element(By.ID, "flash").text
    assert flash.startswith(f"saved: {TOP} fraud") and "published to labels" in flash, flash
    remaining = browser.find_elements(By.CSS_SELECTOR, "#queue tbody tr[data-tx]")
    assert [r.get_attribute("data-tx") for r in remaining] == [OTHER]  # the case left the queue

    with open_review_store(settings) as store:
        (label,) = store.labels()
        assert (label.transaction_id, label.is_fraud, label.author) == (TOP, True, "alice")
        assert label.note == "burst of small online payments" and store.unpublished_labels() == []
    published = [decode_label(m.value()) for m in read_topic(settings.require_kafka(), topics.labels)]
    assert [(lb.transaction_id, lb.source, lb.author, lb.note) for lb in published] == [
        (TOP, LabelSource.REVIEW, "alice", "burst of small online payments")
    ]
