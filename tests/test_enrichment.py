"""`enrich` parsed from rule files, and log lines (anyone's data) made safe to show."""

from __future__ import annotations

import time

import pytest

from eventd.errors import ConfigError
from eventd.ruleset.enrichment import (
    MAX_LINE,
    Enrichment,
    HistorySpec,
    LogsSpec,
    history_record,
    history_view,
    parse_enrich,
)


def test_the_forms_of_enrich() -> None:
    assert parse_enrich(None) is None
    assert parse_enrich("resource") == Enrichment(resource=True)
    both = parse_enrich(["logs", "history"])
    assert both is not None and not both.resource
    assert both.logs == LogsSpec() and both.history == HistorySpec()
    tuned = parse_enrich({"logs": {"lines": 5, "max_bytes": 2048}, "history": {"window": "10m"}})
    assert tuned is not None and tuned.logs is not None and tuned.history is not None
    assert (tuned.logs.lines, tuned.logs.max_bytes, tuned.history.window) == (5, 2048, 600.0)


@pytest.mark.parametrize(("value", "message"), [
    ("everything", "enrich: 'everything' is not one of resource, logs, history"),
    ({"logs": {"lines": 0}}, "enrich.logs.lines: 0 must be a whole number from 1 to 200"),
    ({"logs": {"lines": True}}, "enrich.logs.lines: True must be a whole number from 1 to 200"),
    ({"logs": {"max_bytes": 10**9}}, "enrich.logs.max_bytes: 1000000000 must be a whole number"),
    ({"logs": {"redact": ["(unclosed"]}}, "enrich.logs.redact: '(unclosed' is not a valid RE2"),
    ({"logs": {"redact": ["x" * 300]}}, "enrich.logs.redact: a list of at most 20"),
    ({"history": {"window": "soon"}}, "enrich.history.window: 'soon' is not a duration"),
])
def test_bad_enrich_is_one_clear_message(value, message) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_enrich(value)
    assert str(caught.value).startswith(message)


def test_lines_are_redacted_escaped_and_cut() -> None:
    spec = parse_enrich({"logs": {"lines": 20, "redact": [r"session=\w+"]}})
    assert spec is not None and spec.logs is not None
    shown = spec.logs.redact([
        "db password=hunter2 user=bob",
        'config {"api_key": "abc123", "db_password": "p w"}',
        "Authorization: Bearer eyJhbGciOi.abc.def",
        "GET https://x.example/cb?token=t0k3n&x=1",
        "login session=deadbeef ok",
        "\x1b[31mred\x1b[0m and a\rcarriage",
        "-----BEGIN RSA PRIVATE KEY-----",
        "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2Z0b1cYdH8uP7fM3zGkqPzQ1",
        "y" * 5000,
    ])
    assert shown[0] == "db password=*** user=bob"
    assert "abc123" not in shown[1] and '"p w"' not in shown[1]
    assert shown[2] == "Authorization: Bearer ***"
    assert "t0k3n" not in shown[3]
    assert shown[4] == "login *** ok"
    assert "\x1b" not in shown[5] and "\r" not in shown[5]
    assert shown[6] == "***" and shown[7] == "***"
    assert len(shown[8]) == MAX_LINE + 3 and shown[8].endswith("...")


def test_a_hostile_redaction_pattern_runs_in_linear_time() -> None:
    """RE2: `(a+)+$` on a long line of a's and a b is instant (Python's re would hang)."""
    spec = parse_enrich({"logs": {"redact": ["(a+)+$"]}})
    assert spec is not None and spec.logs is not None
    started = time.monotonic()
    spec.logs.redact(["a" * 900 + "b"] * 20)
    assert time.monotonic() - started < 2.0


def test_history_records_keep_no_free_text_and_summarise() -> None:
    event = {"type": "container", "action": "die", "uuid": "u1", "datetime": "x",
             "attributes": {"exitCode": "137", "image": "shop/api"}, "name": "anything"}
    record = history_record(event, 10.0)
    assert record == {"at": 10.0, "type": "container", "action": "die", "uuid": "u1",
                      "datetime": "x", "exit_code": 137}
    assert "exit_code" not in history_record({"attributes": {"exitCode": "1; rm"}}, 1.0)
    view = history_view([record, {**record, "exit_code": 1}], 3600)
    assert view["summary"] == "2 events in the last 1h (die x2); last exit codes 137, 1"
    assert view["count"] == 2 and view["exit_codes"] == [137, 1]
