"""Digests (`group` on a webhook): a burst of crashes becomes one Slack-shaped message per
service, against the emulator and the test receiver; a restart while a group is open loses
none of its events and sends it once. The Grouper's own rules (max, order) on a real store."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from eventd.alerts.groups import Grouper
from eventd.emulator.world import DEFAULT_SERVICE_UUIDS
from eventd.records import ActionJob
from eventd.ruleset.loader import load_rules
from eventd.settings import Settings
from eventd.stores import open_store
from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.waiting import wait_until

RULES = """
rules:
  - name: crashes
    match: {{type: container, state: Stopped}}
    actions:
      - webhook:
          url: "{url}/slack"
          group: {{by: "{{{{ parent.service }}}}", wait: {wait}, max: 100}}
          json:
            text: "{{{{ group.count }}}} containers of {{{{ group.key }}}} crashed"
            first: "{{{{ group.events[0].resource_uri }}}}"
            last: "{{{{ group.events[-1].resource_uri }}}}"
"""


def crash(emulator, service: str, n: int) -> str:
    uri = f"/api/app/v1/container/{uuid.UUID(int=n + (1 << 64))}/"
    emulator.emit_event(type="container", action="update", state="Stopped", resource_uri=uri,
                        parents=[emulator.world.uri("service", DEFAULT_SERVICE_UUIDS[service])])
    return uri


@pytest.fixture
def daemon_for(emulator, webhook_receiver, tmp_path: Path):
    started = []

    def start(wait: str = "2s"):
        rules = write_rules(tmp_path / "rules", RULES.format(url=webhook_receiver.url, wait=wait))
        daemon = start_daemon(emulator, rules, tmp_path / "state", env=emulator_env(emulator))
        started.append(daemon)
        assert emulator.wait_for_connections(1, 5)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def slack(receiver) -> list[dict]:
    return [r.json() for r in receiver.requests if r.path == "/slack"]


def test_fifty_crashes_of_one_service_are_one_message(daemon_for, emulator, webhook_receiver):
    daemon = daemon_for()
    uris = [crash(emulator, "web", n) for n in range(50)]
    web = emulator.world.uri("service", DEFAULT_SERVICE_UUIDS["web"])
    wait_until(lambda: slack(webhook_receiver), 15, message="the digest")
    assert daemon.wait_idle(5)
    assert slack(webhook_receiver) == [{"text": f"50 containers of {web} crashed",
                                        "first": uris[0], "last": uris[-1]}]
    sample = daemon.metrics.registry.get_sample_value
    assert sample("eventd_actions_total", {"kind": "webhook", "outcome": "grouped"}) == 50
    assert sample("eventd_actions_total", {"kind": "webhook", "outcome": "success"}) == 1
    assert sample("eventd_groups_open") == 0


def test_two_services_are_two_messages(daemon_for, emulator, webhook_receiver):
    daemon = daemon_for()
    for n in range(50):
        crash(emulator, "web" if n % 5 else "db", n)
    wait_until(lambda: len(slack(webhook_receiver)) == 2, 15, message="two digests")
    assert daemon.wait_idle(5)
    texts = sorted(m["text"] for m in slack(webhook_receiver))
    web, db = (emulator.world.uri("service", DEFAULT_SERVICE_UUIDS[s]) for s in ("web", "db"))
    assert texts == sorted([f"40 containers of {web} crashed", f"10 containers of {db} crashed"])


def test_a_restart_while_a_group_is_open_loses_nothing_and_sends_it_once(
        daemon_for, emulator, webhook_receiver):
    daemon = daemon_for(wait="3s")
    for n in range(10):
        crash(emulator, "web", n)
    sample = daemon.metrics.registry.get_sample_value
    wait_until(lambda: sample("eventd_actions_total", {"kind": "webhook", "outcome": "grouped"})
               == 10, 5, message="10 events in the open group")
    assert sample("eventd_groups_open") == 1
    daemon.stop()
    assert slack(webhook_receiver) == []  # the group was still open

    daemon = daemon_for(wait="3s")
    assert daemon.metrics.registry.get_sample_value("eventd_groups_open") == 1  # read back
    wait_until(lambda: slack(webhook_receiver), 15, message="the digest after the restart")
    assert daemon.wait_idle(5)
    wait_until(lambda: daemon.metrics.registry.get_sample_value("eventd_groups_open") == 0, 5)
    assert [m["text"].split()[0] for m in slack(webhook_receiver)] == ["10"]
    assert daemon.store.group_list() == []


def test_a_group_closes_at_max_and_after_wait_in_order(tmp_path: Path, metrics):
    rules = write_rules(tmp_path, """
        rules:
          - name: g
            match: {type: container}
            actions:
              - webhook:
                  url: http://127.0.0.1:9/x
                  group: {by: "{{ event.state }}", wait: 10s, max: 3}
                  json:
                    n: "{{ group.count }}"
                    uuids: "{{ group.events | map(attribute='uuid') | join(',') }}"
    """)
    ruleset = load_rules([rules], {})
    store = open_store(Settings(store="sqlite", state_dir=tmp_path / "state"))
    sent: list[ActionJob] = []
    grouper = Grouper(store, sent.append, metrics,
                      lambda rule, index: ruleset.by_name[rule].actions[index],
                      lambda kind, options: kind)
    try:
        for n in range(4):
            grouper.add("g", 0, "webhook", "Stopped", {"by": "x", "wait": "10s", "max": 3},
                        {"uuid": f"u{n}", "state": "Stopped"}, 100.0 + n)
        assert [job.options["json"] for job in sent] == [{"n": "3", "uuids": "u0,u1,u2"}]
        assert grouper.due(112.9) == 0  # the second group opened at 103: closes at 113
        assert grouper.due(113.0) == 1
        assert [job.options["json"] for job in sent][1] == {"n": "1", "uuids": "u3"}
        assert "group" not in sent[0].options and sent[0].id != sent[1].id
        assert metrics.registry.get_sample_value("eventd_groups_open") == 0
    finally:
        store.close()


def test_a_group_the_dispatcher_refuses_stays_in_the_store(tmp_path: Path, metrics):
    rules = write_rules(tmp_path, """
        rules:
          - name: g
            match: {type: container}
            actions:
              - webhook: {url: "http://127.0.0.1:9/x", group: {by: k}, json: {n: "{{ group.count }}"}}
    """)
    ruleset = load_rules([rules], {})
    store = open_store(Settings(store="memory"))
    grouper = Grouper(store, lambda job: False, metrics,  # as Dispatcher.submit while closing
                      lambda rule, index: ruleset.by_name[rule].actions[index],
                      lambda kind, options: kind)
    grouper.add("g", 0, "webhook", "k", {"by": "k"}, {"uuid": "u1"}, 100.0)
    assert grouper.due(200.0) == 1
    assert [(key, size) for key, _, size in store.group_list()] == [("g\0" "0\0k", 1)]
    sent: list[ActionJob] = []
    again = Grouper(store, sent.append, metrics,  # the next start
                    lambda rule, index: ruleset.by_name[rule].actions[index],
                    lambda kind, options: kind)
    assert again.due(200.0) == 1
    assert [job.options["json"] for job in sent] == [{"n": "1"}] and store.group_list() == []


def test_open_groups_are_capped_the_oldest_closing_early_counted(tmp_path: Path, metrics):
    """Issue 20 finding 15: 10,000 keys held 45 MB. Past the cap the oldest group closes now."""
    from eventd.alerts.groups import MAX_OPEN_GROUPS

    rules = write_rules(tmp_path, """
        rules:
          - name: g
            match: {type: container}
            actions:
              - webhook:
                  url: http://127.0.0.1:9/x
                  group: {by: "{{ event.uuid }}", wait: 1h, max: 100}
                  json: {key: "{{ group.key }}", n: "{{ group.count }}"}
    """)
    ruleset = load_rules([rules], {})
    store = open_store(Settings(store="sqlite", state_dir=tmp_path / "state"))
    sent: list[ActionJob] = []
    grouper = Grouper(store, sent.append, metrics,
                      lambda rule, index: ruleset.by_name[rule].actions[index],
                      lambda kind, options: kind)
    try:
        total = MAX_OPEN_GROUPS + 50
        for n in range(total):
            grouper.add("g", 0, "webhook", f"u{n}", {"by": "x", "wait": "1h", "max": 100},
                        {"uuid": f"u{n}"}, 100.0 + n)
        assert grouper.open == MAX_OPEN_GROUPS
        assert len(store.group_list()) == MAX_OPEN_GROUPS
        assert [job.options["json"]["key"] for job in sent] == [f"u{n}" for n in range(50)]
        assert metrics.registry.get_sample_value("eventd_groups_closed_early_total") == 50
        assert metrics.registry.get_sample_value("eventd_groups_open") == MAX_OPEN_GROUPS
    finally:
        store.close()
