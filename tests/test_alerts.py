"""The alert book on every store: fire, re-send, resolve, expire, across a reopen.

Time is a list the test moves forward (the book reads it as its clock); jobs go to a list.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eventd.actions.alertmanager import AlertmanagerAction
from eventd.alerts.firing import DEFAULT_EXPIRE, AlertBook, alert_key
from eventd.ops.metrics import Metrics
from eventd.records import ActionJob
from eventd.settings import Settings
from eventd.stores import STORES, open_store
from eventd.stores.base import Store
from tests.store_fixtures import settings_for

URL = "http://127.0.0.1:9093"


@pytest.fixture(params=sorted(STORES))
def store(request, tmp_path: Path):
    """A fresh store of every kind in the registry (memory, SQLite, Redis)."""
    store = open_store(settings_for(request.param, tmp_path, request))
    yield store
    store.close()


def job(rule: str = "node-down", resolve: bool = False, node: str = "n1", **options) -> ActionJob:
    opts = {"url": URL, "labels": {"alertname": "NodeDown", "node": node}, **options}
    if resolve:
        opts["resolve"] = True
    return ActionJob(id=f"{rule}-{node}-{resolve}", rule=rule, kind="alertmanager", options=opts,
                     event={"type": "node", "state": "Unreachable", "uuid": "e1",
                            "datetime": "Thu, 26 Nov 2026 10:00:00 +0000", "extra": "x" * 100},
                     target="alertmanager 127.0.0.1:9093", created_at=0.0)


class Book:
    def __init__(self, store: Store, metrics: Metrics, resend: float = 60.0) -> None:
        self.now = [1_000_000.0]
        self.sent: list[ActionJob] = []
        self.book = AlertBook(store, self.sent.append, metrics, resend=resend,
                              clock=lambda: self.now[0])

    def at(self, seconds: float) -> Book:
        self.now[0] = 1_000_000.0 + seconds
        return self


def test_identity_is_url_and_labels_in_any_order() -> None:
    assert alert_key(URL, {"a": "1", "b": "2"}) == alert_key(URL + "/", {"b": "2", "a": "1"})
    assert alert_key(URL, {"a": "1"}) != alert_key("http://other:9093", {"a": "1"})
    assert alert_key(URL, {"a": "1"}) != alert_key(URL, {"a": "2"})


def test_fire_resend_resolve(store, metrics) -> None:
    b = Book(store, metrics, resend=60)
    fired = job()
    b.book.submit(fired)
    assert b.sent == [fired]
    assert fired.context["ends_in"] == 240  # endsAt = now + 4 x resend, computed when sent
    assert metrics.registry.get_sample_value("eventd_alerts_active") == 1
    assert b.at(59).book.tick() == 0  # not due yet
    assert b.at(60).book.tick() == 1
    resent = b.sent[-1]
    assert (resent.kind, resent.rule, resent.options) == ("alertmanager", "node-down", fired.options)
    assert resent.context["resend"] is True
    assert resent.context["starts_at"] == fired.context["starts_at"]  # startsAt kept
    assert "extra" not in resent.event  # only the fields a log line needs are kept
    assert b.at(120).book.tick() == 1
    assert b.at(121).book.tick() == 0
    resolving = job(rule="node-up", resolve=True)
    b.at(150).book.submit(resolving)
    assert resolving.context["ends_at"] == b.now[0]
    assert resolving.context["starts_at"] == fired.context["starts_at"]
    assert metrics.registry.get_sample_value("eventd_alerts_active") == 0
    assert b.at(600).book.tick() == 0  # nothing re-sent once resolved
    assert store.alert_list() == []


def test_a_second_fire_keeps_the_first_start_and_counts_once(store, metrics) -> None:
    b = Book(store, metrics)
    first, second = job(), job()
    b.book.submit(first)
    b.at(30).book.submit(second)
    assert second.context["starts_at"] == first.context["starts_at"]
    assert b.book.active == 1
    b.book.submit(job(node="n2"))
    assert metrics.registry.get_sample_value("eventd_alerts_active") == 2


def test_resolving_what_is_not_firing_sends_nothing(store, metrics) -> None:
    b = Book(store, metrics)
    assert b.book.submit(job(resolve=True)) is False
    assert b.sent == [] and b.book.active == 0
    assert metrics.registry.get_sample_value(
        "eventd_actions_total", {"kind": "alertmanager", "outcome": "skipped"}) == 1


def test_expire_stops_resending(store, metrics, caplog) -> None:
    b = Book(store, metrics, resend=60)
    b.book.submit(job(expire="5m"))
    assert b.at(240).book.tick() == 1
    assert b.at(301).book.tick() == 0  # expired at 300 s
    assert b.book.active == 0 and store.alert_list() == []
    assert "expired after 301 s without a resolve" in caplog.text
    b.book.submit(job(node="n3"))
    (_, record), = store.alert_list()
    assert record["expires_at"] - record["fired_at"] == DEFAULT_EXPIRE


def test_firing_alerts_survive_a_reopen(tmp_path: Path, metrics) -> None:
    settings = Settings(store="sqlite", state_dir=tmp_path / "state")
    store = open_store(settings)
    Book(store, metrics).book.submit(job())
    store.close()
    store = open_store(settings)
    try:
        again = Book(store, Metrics())
        assert again.book.active == 1
        assert again.at(60).book.tick() == 1  # re-sending resumes
        again.book.submit(job(resolve=True))
        assert again.book.active == 0
    finally:
        store.close()


def test_the_action_sends_ends_at_from_the_book() -> None:
    firing, resolving = job(), job(resolve=True)
    firing.context.update(starts_at=1_000_000.0, ends_in=240.0)
    resolving.context.update(starts_at=1_000_000.0, ends_at=1_000_100.0)
    action = AlertmanagerAction.__new__(AlertmanagerAction)
    alert = AlertmanagerAction.alert(action, firing)
    assert alert["startsAt"] == "1970-01-12T13:46:40Z" and alert["endsAt"] > "2026"
    assert AlertmanagerAction.alert(action, resolving)["endsAt"] == "1970-01-12T13:48:20Z"
    assert AlertmanagerAction.validate({"url": URL, "expire": "soon"}) == [
        "expire: 'soon' is not a duration (e.g. 30s, 10m, 1h)"]
    assert AlertmanagerAction.validate({"url": URL, "expire": "24h", "resolve": True}) == []
    # an empty url (an unset ${ALERTMANAGER_URL:-}) loads, and the action does nothing
    assert AlertmanagerAction.validate({"url": ""}) == []
    assert AlertmanagerAction.inactive(action, {"url": ""}) is True
    assert AlertmanagerAction.inactive(action, {"url": URL}) is False
    assert AlertmanagerAction.validate({"url": "ftp://x"}) == [
        "url must be an http:// or https:// URL"]


def test_alert_resend_from_the_flag_or_the_environment() -> None:
    from eventd.errors import ConfigError

    assert Settings.from_env({}).alert_resend == 60.0
    assert Settings.from_env({"EVENTD_ALERT_RESEND": "15s"}).alert_resend == 15.0
    assert Settings.from_env({"EVENTD_ALERT_RESEND": "15s"}, alert_resend=2.0).alert_resend == 2.0
    with pytest.raises(ConfigError, match="EVENTD_ALERT_RESEND: 'soon' is not a duration"):
        Settings.from_env({"EVENTD_ALERT_RESEND": "soon"})
    with pytest.raises(ConfigError, match=r"--alert-resend \(EVENTD_ALERT_RESEND\) must be more "
                                          r"than 0, got 0 s"):
        Settings.from_env({}, alert_resend=0.0)


def test_a_zero_alert_resend_is_exit_2_naming_the_flag(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "eventd", "run", "--alert-resend", "0s",
                           "--state-dir", str(tmp_path / "state")], capture_output=True, text=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert done.returncode == 2
    assert done.stderr.strip() == ("eventd: configuration error: --alert-resend "
                                   "(EVENTD_ALERT_RESEND) must be more than 0, got 0 s")


def test_resolve_after_resolves_what_stopped_firing(store, metrics) -> None:
    """A crash loop pages once; each crash pushes the resolve back; quiet for resolve_after,
    the firing rule's own options resolve it (so the gate knows them)."""
    b = Book(store, metrics, resend=60)
    b.book.submit(job(resolve_after="10m"))
    b.at(300).book.submit(job(resolve_after="10m"))  # crashed again: 10 minutes from now
    b.at(899).book.tick()  # a re-send (alertmanager), no resolve: not quiet for 10 min yet
    resolves = [j for j in b.sent if "ends_at" in j.context]
    assert resolves == []
    b.at(900).book.tick()
    [resolved] = [j for j in b.sent if "ends_at" in j.context]
    assert resolved.options == job(resolve_after="10m").options  # no `resolve` key added
    assert resolved.context["auto_resolved"] is True and resolved.context["ends_at"] == b.now[0]
    assert b.book.active == 0 and store.alert_list() == []
    assert b.at(2000).book.tick() == 0
