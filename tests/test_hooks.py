"""`eventd.hooks`: a listener hears the daemon's news without reading its logs."""

from __future__ import annotations

import threading
from typing import Any

from eventd.hooks import Hooks, Observer, hooks
from tests.daemon_helpers import start_daemon, write_rules
from tests.waiting import wait_until

RULES = """
rules:
  - name: alert-stopped
    match: {type: container, state: Stopped}
    actions:
      - webhook: {url: "WEBHOOK/ok", json: {text: "{{ event.state }}"}}
  - name: refused
    match: {type: container, state: Stopped}
    actions:
      - webhook: {url: "WEBHOOK/refused", json: {text: "no"}}
"""


class Recorder(Observer):
    def __init__(self) -> None:
        self.news: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def _add(self, name: str, value: Any) -> None:
        with self.lock:
            self.news.append((name, value))

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.news]

    def on_connected(self, url: str, gap_seconds: float | None) -> None:
        self._add("connected", gap_seconds)

    def on_disconnected(self, reason: str, retry_in: float, was_connected: bool) -> None:
        self._add("disconnected", (reason, was_connected))

    def on_delivered(self, job: Any, result: str) -> None:
        self._add("delivered", (job.rule, result))

    def on_dead_lettered(self, job: Any, reason: str) -> None:
        self._add("dead", (job.rule, reason))

    def on_reloaded(self, ok: bool, rules: int) -> None:
        self._add("reloaded", (ok, rules))


def test_a_listener_hears_connect_drop_delivery_dead_letter_and_reload(
        emulator, webhook_receiver, tmp_path):
    webhook_receiver.respond_with(200)  # one lane per host, in rule order: the second is refused
    webhook_receiver.respond_with(400)
    rules = write_rules(tmp_path / "rules", RULES.replace("WEBHOOK", webhook_receiver.url))
    recorder = Recorder()
    unsubscribe = hooks.subscribe(recorder)
    daemon = start_daemon(emulator, rules, tmp_path / "state")
    try:
        wait_until(lambda: "connected" in recorder.names(), 10, message="connected hook")
        emulator.emit_event(type="container", state="Stopped")
        wait_until(lambda: {"delivered", "dead"} <= set(recorder.names()), 10,
                   message="delivered and dead-lettered hooks")
        emulator.stop_stream()
        wait_until(lambda: "disconnected" in recorder.names(), 10, message="disconnected hook")
        emulator.start_stream()
        wait_until(lambda: recorder.names().count("connected") >= 2, 10, message="reconnected")
        assert daemon.reload()
    finally:
        daemon.stop()
        unsubscribe()
    news = dict((name, value) for name, value in reversed(recorder.news))
    assert news["delivered"][0] == "alert-stopped" and "200" in news["delivered"][1]
    assert news["dead"][0] == "refused" and "400" in news["dead"][1]
    assert news["disconnected"][1] is True  # it was connected
    gaps = [value for name, value in recorder.news if name == "connected"]
    assert gaps[0] is None and gaps[1] is not None and gaps[1] >= 0
    assert news["reloaded"] == (True, 2)


def test_a_listener_that_raises_is_reported_and_the_others_still_hear(internal_errors):
    class Broken(Observer):
        def on_reloaded(self, ok: bool, rules: int) -> None:
            raise RuntimeError("listener bug")

    local, heard = Hooks(), []

    class Good(Observer):
        def on_reloaded(self, ok: bool, rules: int) -> None:
            heard.append(rules)

    unsubscribe_broken = local.subscribe(Broken())
    unsubscribe = local.subscribe(Good())
    local.on_reloaded(True, 3)
    assert heard == [3]
    assert [where for where, _ in internal_errors] == ["hook on_reloaded"]
    internal_errors.clear()
    unsubscribe_broken()
    unsubscribe()
    local.on_reloaded(True, 4)
    assert heard == [3]
