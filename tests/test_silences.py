"""Silences: hostile matchers first, then the book's timing, then a real daemon muting actions.

A silence is created by whoever holds the console's token or a shell: its matchers, regexes
and comment are hostile input. What a user sees: the receiver gets nothing while a silence
holds, `eventd_actions_total{outcome="silenced"}` counts it, the audit line says "silenced",
the silence ends on its second and survives a restart, and an alert firing when it began is
still re-sent (Alertmanager keeps it active).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.cli import main
from eventd.ops.metrics import Metrics
from eventd.silences.book import SilenceBook
from eventd.silences.model import BadSilence, new_silence, parse_matcher, silence_from_record
from eventd.silences.regex import MAX_PATTERN, MAX_SUBJECT
from eventd.stores.memory import MemoryStore
from tests.daemon_helpers import start_daemon, write_rules
from tests.waiting import wait_until


def _silence(*matchers, start=None, end=None, now=None, comment="deploy"):
    now = time.time() if now is None else now
    return new_silence(list(matchers), starts_at=start, ends_at=end or now + 3600,
                       created_by="ops", comment=comment, now=now)


# -- hostile input ---------------------------------------------------------------------------
def test_a_catastrophic_regex_costs_linear_time():
    """`(a+)+$` against 4 KiB of `a` and a `b`: Python's re would backtrack for ages."""
    silence = _silence("attributes.name=~(a+)+", "rule=~(x|x|x|x|x)*y")
    event = {"attributes": {"name": "a" * (MAX_SUBJECT - 1) + "b"}}
    started = time.perf_counter()
    for _ in range(100):
        assert not silence.mutes("x" * 50, "webhook", event, {})
    assert time.perf_counter() - started < 1.0  # measured: ~0.02 s for the 100


@pytest.mark.parametrize("spec, why", [
    ("rule", "no operator"),
    ("=x", "1-200 characters"),
    ("rule==x", None),  # "=x" is the value: allowed, matches a rule named "=x"
    ("rule=~(a", "not a valid regex"),
    ("rule=~(a)\\1", "not a valid regex"),  # backreferences: not RE2, not Alertmanager
    ("rule=~" + "a" * (MAX_PATTERN + 1), "longer than"),
    ("rule=" + "a" * 1025, "longer than"),
    ('attributes."x=y', "unclosed quote"),
    ("na\nme=x", "control characters"),
    ({"name": "rule", "op": "~=", "value": "x"}, "op must be one of"),
    ({"name": 1, "op": "=", "value": "x"}, "string name"),
    (["rule", "=", "x"], "name=value"),
])
def test_bad_matchers_are_refused_saying_why(spec, why):
    if why is None:
        assert parse_matcher(spec).value == "=x"
        return
    with pytest.raises(BadSilence, match=why):
        parse_matcher(spec)


def test_a_record_read_back_is_checked_again():
    good = _silence("rule=a").to_record()
    assert silence_from_record(good).to_record() == good
    for change, why in [({"matchers": []}, "at least one matcher"),
                        ({"matchers": ["rule=a"] * 17}, "at most 16"),
                        ({"ends_at": good["starts_at"] - 1}, "before starts_at"),
                        ({"ends_at": float("nan")}, "POSIX time"),
                        ({"ends_at": True}, "POSIX time"),
                        ({"ends_at": good["starts_at"] + 400 * 86400}, "at most 366 days"),
                        ({"comment": ""}, "comment is required"),
                        ({"comment": "x" * 1001}, "longer than 1000"),
                        ({"created_by": ["x"]}, "must be text"),
                        ({"id": "../../x"}, "id must be")]:
        with pytest.raises(BadSilence, match=why):
            silence_from_record({**good, **change})


@given(st.one_of(st.text(max_size=300), st.dictionaries(
    st.sampled_from(["name", "op", "value", "x"]),
    st.one_of(st.text(max_size=40), st.integers(), st.none()), max_size=4)))
@settings(max_examples=300, deadline=None)
def test_any_matcher_input_is_a_matcher_or_bad_silence(spec):
    try:
        matcher = parse_matcher(spec)
    except BadSilence:
        return
    # a usable matcher never raises on any event
    matcher.test("r", "webhook", {"type": spec if isinstance(spec, str) else 1, "a": [1]}, {})


@given(st.dictionaries(st.text(max_size=10), st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3), max_leaves=10)))
@settings(max_examples=200, deadline=None)
def test_matching_any_event_never_raises(event):
    silence = _silence("type=container", "state!=Running", 'attributes."a.b"=~x.*',
                       "label.severity=page")
    assert silence.mutes("r", "alertmanager", event, {"labels": {"severity": "page"}}) in (
        True, False)


# -- the book's timing -----------------------------------------------------------------------
def test_the_book_mutes_from_start_to_end_on_its_clock():
    now = [1_000_000.0]
    store = MemoryStore()
    book = SilenceBook(store, Metrics(), clock=lambda: now[0])
    assert book.muted("crash", "webhook", {}, {}) is None
    silence = _silence("rule=crash", start=now[0] + 10, end=now[0] + 20, now=now[0])
    book.add(silence)
    assert book.muted("crash", "webhook", {}, {}) is None  # pending
    now[0] += 10
    assert book.muted("crash", "webhook", {}, {}) == silence
    assert book.muted("other", "webhook", {}, {}) is None
    now[0] += 9.999
    assert book.muted("crash", "webhook", {}, {}) == silence
    now[0] += 0.001
    assert book.muted("crash", "webhook", {}, {}) is None  # ended on its second, no refresh


def test_a_resolve_is_never_muted_and_labels_match_alerts():
    book = SilenceBook(MemoryStore())
    book.add(_silence("label.severity=page"))
    firing = {"labels": {"severity": "page"}}
    assert book.muted("r", "alertmanager", {}, firing) is not None
    assert book.muted("r", "webhook", {}, firing) is None  # labels are alerts' only
    assert book.muted("r", "alertmanager", {}, {**firing, "resolve": True}) is None
    for kind in ("pagerduty", "opsgenie", "slack", "msteams"):
        # an incident's resolve goes out whatever is silenced: muting it would leave it open
        assert book.muted("r", kind, {}, {**firing, "resolve": True}) is None, kind
        assert book.muted("r", kind, {}, firing) is not None, kind  # its labels match


def test_expire_ends_a_silence_now_and_a_pending_one_never_starts():
    now = [5000.0]
    book = SilenceBook(MemoryStore(), clock=lambda: now[0])
    active = book.add(_silence("rule=a", now=now[0]))
    pending = book.add(_silence("rule=b", start=now[0] + 60, now=now[0]))
    ended = book.expire(active.id)
    assert ended is not None and ended.ends_at == now[0] and ended.state(now[0]) == "expired"
    assert book.muted("a", "log", {}, {}) is None
    never = book.expire(pending.id)
    assert never is not None and never.starts_at == never.ends_at == now[0]
    now[0] += 120
    assert book.muted("b", "log", {}, {}) is None
    assert book.expire("nope") is None


def test_an_unusable_record_in_the_store_is_skipped_logged_once_and_counted(caplog):
    store, metrics = MemoryStore(), Metrics()
    store.silence_put({"id": "evil", "matchers": [{"name": "rule", "op": "=~", "value": "(a"}],
                       "starts_at": 0, "ends_at": 9e9, "created_by": "x", "comment": "y"})
    book = SilenceBook(store, metrics)
    book.add(_silence("rule=a"))
    book.refresh()
    assert [s.describe() for s in book.silences()] == ["rule=a"]
    assert metrics.registry.get_sample_value("eventd_silences_invalid_total") == 1
    assert metrics.registry.get_sample_value("eventd_silences_active") == 1
    assert sum("'evil'" in r.getMessage() for r in caplog.records) == 1


# -- a real daemon -----------------------------------------------------------------------------
def _webhook_rules(tmp_path, receiver, audit):
    return write_rules(tmp_path / "rules", f"""
        rules:
          - name: container-stopped
            match: {{type: container, state: Stopped}}
            actions:
              - webhook: {{url: "{receiver.url}/hook", json: {{text: "{{{{ event.uuid }}}}"}}}}
              - audit: {{path: "{audit}"}}
    """)


def _silenced(daemon):
    return daemon.metrics.registry.get_sample_value(
        "eventd_actions_total", {"kind": "webhook", "outcome": "silenced"})


def _text_of(path: Path) -> str:
    """The file's text, "" until it exists (the audit file appears with its first line)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_silence_from_the_cli_mutes_the_daemon_then_ends_and_survives_a_restart(
        emulator, webhook_receiver, tmp_path, capsys):
    audit = tmp_path / "audit.jsonl"
    rules, state = _webhook_rules(tmp_path, webhook_receiver, audit), tmp_path / "state"
    daemon = start_daemon(emulator, rules, state)
    try:
        wait_until(lambda: daemon.consumer.connected, 5)
        assert main(["silence", "add", "rule=container-stopped", "kind=webhook",
                     "--duration", "8s", "--comment", "deploy <b>web</b>",
                     "--state-dir", str(state)]) == 0
        ident = capsys.readouterr().out.split()[1]
        wait_until(lambda: daemon.pipeline.silences.get(ident) is not None, 3,
                   message="the daemon read the CLI's silence")
        muted = emulator.emit_event(state="Stopped")
        wait_until(lambda: _silenced(daemon) == 1, 5, message="webhook counted silenced")
        lines = wait_until(lambda: [json.loads(line) for line in _text_of(audit).splitlines()
                                    if muted["uuid"] in line], 5, message="audit line written")
        assert {"rule": "container-stopped", "kind": "webhook", "status": "silenced"} in \
            lines[0]["actions"]
        daemon.stop(timeout=5)
        # a restart keeps it: still muting
        daemon = start_daemon(emulator, rules, state)
        wait_until(lambda: daemon.consumer.connected, 5)
        silence = daemon.pipeline.silences.get(ident)
        assert silence is not None and silence.state(time.time()) == "active"
        emulator.emit_event(state="Stopped")
        wait_until(lambda: _silenced(daemon) == 1, 5)
        assert webhook_receiver.requests == []
        # it ends on time: the next event is delivered
        wait_until(lambda: time.time() >= silence.ends_at, 10)
        delivered = emulator.emit_event(state="Stopped")
        wait_until(lambda: webhook_receiver.requests, 5, message="delivered after the end")
        assert [r.json()["text"] for r in webhook_receiver.requests] == [delivered["uuid"]]
    finally:
        daemon.stop(timeout=5)


def test_an_alert_firing_when_the_silence_began_is_still_resent(emulator, webhook_receiver,
                                                                tmp_path):
    rules = write_rules(tmp_path / "rules", f"""
        rules:
          - name: container-stopped
            match: {{type: container, state: Stopped}}
            actions:
              - alertmanager:
                  url: "{webhook_receiver.url}"
                  labels: {{severity: page, container: "{{{{ object.uuid }}}}"}}
    """)
    daemon = start_daemon(emulator, rules, tmp_path / "state", alert_resend=0.3)
    try:
        wait_until(lambda: daemon.consumer.connected, 5)
        emulator.emit_event(state="Stopped")
        wait_until(lambda: webhook_receiver.requests, 5, message="alert fired")
        daemon.pipeline.silences.add(_silence("label.severity=page"))
        emulator.emit_event(state="Stopped", resource_uri=emulator.world.uri(
            "container", emulator.world.objects("container")[1].uuid))
        wait_until(lambda: daemon.metrics.registry.get_sample_value(
            "eventd_actions_total", {"kind": "alertmanager", "outcome": "silenced"}) == 1, 5)
        webhook_receiver.clear()
        # re-sends of the first alert go on, each with endsAt ahead: Alertmanager keeps it
        wait_until(lambda: len(webhook_receiver.requests) >= 2, 5, message="re-sent twice")
        sent = [alert for r in webhook_receiver.requests for alert in r.json()]
        assert {a["labels"]["container"] for a in sent} == {
            emulator.world.objects("container")[0].uuid}
        assert all(a["endsAt"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) for a in sent)
    finally:
        daemon.stop(timeout=5)


def test_the_cli_says_what_is_wrong_with_exit_2(tmp_path, capsys):
    state = ["--state-dir", str(tmp_path / "state")]
    assert main(["silence", "add", "rule=~(a", "--comment", "x", *state]) == 2
    assert "not a valid regex" in capsys.readouterr().err
    assert main(["silence", "add", "rule=a", *state]) == 2
    assert "comment is required" in capsys.readouterr().err
    assert main(["silence", "add", "rule=a", "--comment", "x", "--end", "tomorrow", *state]) == 2
    assert "RFC 3339" in capsys.readouterr().err
    assert main(["silence", "expire", "nope", *state]) == 2
    assert main(["silence", "list", "--store", "redis://127.0.0.1:1/0", *state]) == 2
    assert "eventd silence:" in capsys.readouterr().err
    assert main(["silence", "add", "rule=a", "--comment", "x", "--duration", "1h", *state]) == 0
    assert main(["silence", "list", "--json", *state]) == 0
    listed = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert [(s["state"], s["matchers"]) for s in listed] == [
        ("active", [{"name": "rule", "op": "=", "value": "a"}])]


@pytest.mark.parametrize("name", ["sqlite", "redis"])
def test_a_silence_added_by_one_process_mutes_in_another_within_a_refresh(name, tmp_path,
                                                                          request):
    """Two handles on one store: the CLI and a daemon, or two replicas of a cluster."""
    from eventd.stores import open_store
    from tests.store_fixtures import settings_for

    settings = settings_for(name, tmp_path, request)
    mine, theirs = open_store(settings), open_store(settings)
    try:
        book = SilenceBook(theirs, refresh=0.05)
        book.start()
        try:
            assert book.muted("crash", "webhook", {}, {}) is None
            added = SilenceBook(mine).add(_silence("rule=crash"))
            wait_until(lambda: book.muted("crash", "webhook", {}, {}) == added, 2)
            SilenceBook(mine).expire(added.id)
            wait_until(lambda: book.muted("crash", "webhook", {}, {}) is None, 2)
        finally:
            book.close()
    finally:
        mine.close()
        theirs.close()
