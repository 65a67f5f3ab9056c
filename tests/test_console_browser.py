"""The console in a real browser: Debian's Chromium driven through chromedriver (selenium).

Against a running eventd and the emulator: an event appears on Live within 1 s, shown as text
whatever its fields hold; a silence created from that event mutes the next matching action and
ends on time; a dead letter retried from the page reaches the receiver, and without the token
the buttons are refused; every page works at a phone's width. Without Chromium the tests skip
naming the packages (apt-get install chromium chromium-driver); under CI=true they fail.
`EVENTD_SCREENSHOTS=DIR` also saves each page's screenshot there (docs/console/ in the README).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.waiting import wait_until

TOKEN = "browser-token-0123456789abcdef"
HOSTILE = '<img src=x onerror="window.__xss=1">'
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        message = f"no {', '.join(missing)}: apt-get install chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def browser(tmp_path):
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}",
                 "--window-size=1280,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, emulator, webhook_receiver, tmp_path):
    """eventd with the console (and a token), and the browser on its /ui/."""
    rules = write_rules(tmp_path / "rules", f"""
        rules:
          - name: 'stopped {HOSTILE}'
            match: {{type: container, state: Stopped}}
            actions:
              - webhook: {{url: "{webhook_receiver.url}/hook", json: {{text: "{{{{ event.uuid }}}}"}}}}
    """)
    daemon = start_daemon(emulator, rules, tmp_path / "state", env=emulator_env(emulator),
                          metrics_addr=("127.0.0.1", 0), ui_token=TOKEN)
    try:
        wait_until(lambda: daemon.consumer.connected, 5)
        base = f"http://127.0.0.1:{daemon.health_port}/ui/"
        browser.get(base)
        _wait_text(browser, "#live-state", "live")
        yield daemon, browser, base
    finally:
        daemon.stop(timeout=5)


def _find(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def _wait_text(driver, css, text, timeout=5.0):
    return wait_until(lambda: any(text in e.text for e in _find(driver, css)), timeout,
                      message=f"{css} shows {text!r}")


def _hostile_event(emulator):
    event = emulator.complete_event({"type": "container", "action": "update", "state": "Stopped"})
    event["name"] = f"web-1 {HOSTILE}<script>window.__xss=2</script>"
    event["resource_uri"] = f"/api/app/v1/user/container/{HOSTILE}/"
    return event


def _use_token(driver, token=TOKEN):
    box = _find(driver, "#token")[0]
    box.clear()
    box.send_keys(token)
    _find(driver, "#token-use")[0].click()
    _wait_text(driver, "#mode", "token set" if token else "no token")


def _shot(driver, name, tmp_path):
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    target = os.environ.get("EVENTD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def test_an_event_appears_on_live_within_a_second_and_only_as_text(page, emulator, tmp_path):
    daemon, driver, _ = page
    event = _hostile_event(emulator)
    sent = time.monotonic()
    emulator.emit(event)
    wait_until(lambda: _find(driver, f'#events tr[data-uuid="{event["uuid"]}"]'), 2,
               interval=0.02, message="the event's row")
    assert time.monotonic() - sent < 1.0
    row = _find(driver, f'#events tr[data-uuid="{event["uuid"]}"]')[0]
    assert "<script>window.__xss=2</script>" in row.text and HOSTILE in row.text
    assert f"stopped {HOSTILE}" in row.text  # the rule's name, as text
    assert driver.execute_script("return window.__xss") is None
    assert not _find(driver, "#events img") and not _find(driver, "#events script")
    _shot(driver, "live", tmp_path)


def test_a_silence_created_from_an_event_mutes_the_next_and_ends_on_time(
        page, emulator, webhook_receiver, tmp_path):
    daemon, driver, _ = page
    emulator.emit_event(state="Stopped")
    wait_until(lambda: webhook_receiver.requests, 5)
    _wait_text(driver, "#events", "delivered")
    _use_token(driver)
    _find(driver, "#events .silence-this")[0].click()
    _wait_text(driver, "#status", "create the silence")
    matchers = _find(driver, "#silence-matchers")[0].get_attribute("value")
    assert matchers.splitlines() == [f"rule=stopped {HOSTILE}", "type=container", "state=Stopped"]
    duration = _find(driver, "#silence-duration")[0]
    duration.clear()
    duration.send_keys("4s")
    _find(driver, "#silence-author")[0].send_keys("on-call")
    _find(driver, "#silence-comment")[0].send_keys(f"deploy {HOSTILE}")
    _find(driver, "#silence-create")[0].click()
    _wait_text(driver, "#status", "created until")
    _wait_text(driver, "#silences-table", f"deploy {HOSTILE}")
    assert driver.execute_script("return window.__xss") is None
    _shot(driver, "silences", tmp_path)
    silence = daemon.pipeline.silences.silences()[0]
    webhook_receiver.clear()
    emulator.emit_event(state="Stopped")
    wait_until(lambda: daemon.metrics.registry.get_sample_value(
        "eventd_actions_total", {"kind": "webhook", "outcome": "silenced"}) == 1, 5)
    driver.get(driver.current_url.split("#")[0] + "#live")
    _wait_text(driver, "#events", "silenced")
    assert webhook_receiver.requests == []
    wait_until(lambda: time.time() >= silence.ends_at, 6, message="the silence's end")
    emulator.emit_event(state="Stopped")
    wait_until(lambda: webhook_receiver.requests, 5, message="delivered after the silence")


def test_a_dead_letter_is_refused_without_the_token_and_retried_with_it(
        page, emulator, webhook_receiver, tmp_path):
    daemon, driver, base = page
    webhook_receiver.respond_with(400, count=1)
    emulator.emit_event(state="Stopped")
    wait_until(lambda: daemon.store.deadletter_count() == 1, 5)
    webhook_receiver.clear()
    driver.get(base + "#dead")
    _wait_text(driver, "#dead-table", "HTTP 400")
    _find(driver, "#dead-table .inspect")[0].click()
    _wait_text(driver, "#dead-detail", '"options"')
    _shot(driver, "dead-letters", tmp_path)
    for button in (".retry", ".discard"):
        _find(driver, f"#dead-table {button}")[0].click()
        _wait_text(driver, "#status", "refused (401)")
    assert daemon.store.deadletter_count() == 1 and webhook_receiver.requests == []
    _use_token(driver)
    _find(driver, "#dead-table .retry")[0].click()
    _wait_text(driver, "#status", "retried")
    wait_until(lambda: webhook_receiver.requests, 5, message="the retried letter arrives")
    assert daemon.store.deadletter_count() == 0


def test_rules_and_cluster_pages_and_a_phones_width(page, emulator, tmp_path):
    daemon, driver, base = page
    emulator.emit_event(state="Stopped")
    _wait_text(driver, "#events", "delivered")
    for tab, text in (("rules", "last (re)load: ok"), ("cluster", "a single eventd")):
        driver.get(base + "#" + tab)
        _wait_text(driver, f"#{tab}", text)
        _shot(driver, tab, tmp_path)
    driver.get(base + "#rules")
    _wait_text(driver, "#rules-table", "1")  # one match counted
    driver.set_window_size(390, 844)
    for tab in ("live", "rules", "dead", "silences", "cluster"):
        driver.get(base + "#" + tab)
        wait_until(lambda tab=tab: _find(driver, f"#{tab}")[0].is_displayed(), 5)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{tab} is wider than a phone by {overflow}px"
        assert all(link.is_displayed() for link in _find(driver, "#tabs a"))
    _shot(driver, "phone", tmp_path)
