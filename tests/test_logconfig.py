"""Log lines as an operator reads them, written by real handlers to a StringIO."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from eventd.clients.dockercloud.auth import Credentials
from eventd.errors import ConfigError
from eventd.ops import logconfig

CREDS = Credentials.basic("alice", "s3cr3t-apikey-0123456789", "test")
SECRETS = CREDS.secrets()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    eventd_logger = logging.getLogger("eventd")
    saved = (list(root.handlers), root.level, eventd_logger.level)
    yield
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
    root.setLevel(saved[1])
    eventd_logger.setLevel(saved[2])


def configured(log_format: str = "text", level: str = "INFO") -> io.StringIO:
    out = io.StringIO()
    logconfig.configure(log_format, level, secrets=SECRETS, stream=out)
    return out


def test_text_line_shape() -> None:
    out = configured("text")
    logging.getLogger("eventd.sources.dockercloud.stream").info("connected to %s", "wss://ws.example/")
    line = out.getvalue()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO eventd\.sources\.dockercloud\.stream: connected to wss://ws\.example/\n",
        line), line


def test_json_line_has_fields_extras_and_exception() -> None:
    out = configured("json")
    log = logging.getLogger("eventd.actions.webhook")
    try:
        raise ValueError("bad answer")
    except ValueError:
        log.exception("delivery failed for rule %s", "crash", extra={"rule": "crash", "attempt": 2})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["time"])
    assert data["level"] == "ERROR"
    assert data["logger"] == "eventd.actions.webhook"
    assert data["message"] == "delivery failed for rule crash"
    assert data["rule"] == "crash" and data["attempt"] == 2
    assert "ValueError: bad answer" in data["exception"]
    assert "Traceback" in data["exception"]


def test_levels_eventd_at_level_others_at_warning() -> None:
    out = configured("text", "debug")
    logging.getLogger("eventd.x").debug("eventd detail")
    logging.getLogger("urllib3.connectionpool").info("library chatter")
    logging.getLogger("urllib3.connectionpool").warning("library warning")
    text = out.getvalue()
    assert "eventd detail" in text
    assert "library chatter" not in text
    assert "library warning" in text


def test_configure_twice_keeps_one_handler() -> None:
    configured("text")
    out = configured("json")
    logging.getLogger("eventd").warning("once")
    assert len(out.getvalue().splitlines()) == 1
    marked = [h for h in logging.getLogger().handlers if isinstance(h.formatter,
              (logconfig.TextFormatter, logconfig.JsonFormatter))]
    assert len(marked) == 1


@pytest.mark.parametrize("fmt, level", [("xml", "INFO"), ("text", "LOUD")])
def test_bad_format_or_level_is_a_config_error(fmt: str, level: str) -> None:
    with pytest.raises(ConfigError, match="--log-(format|level)"):
        logconfig.configure(fmt, level, stream=io.StringIO())


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_credentials_never_reach_the_output(log_format: str) -> None:
    out = configured(log_format)
    log = logging.getLogger("eventd.clients.http")
    header = CREDS.header
    token = header.split()[1]
    log.info("sending headers %s", {"Authorization": header, "Accept": "application/json"})
    log.warning("retrying with token %s and key %s", token, "s3cr3t-apikey-0123456789")
    try:
        raise RuntimeError(f"handshake failed, sent Authorization: {header}")
    except RuntimeError:
        log.exception("stream error")
    log.info("extra", extra={"auth_header": header})
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text
    assert "s3cr3t" not in text
    assert "***" in text
    assert "application/json" in text  # the rest of the message survives


def test_a_secret_is_also_redacted_in_its_url_quoted_form() -> None:
    secret = "pa+ss/word=="
    text = "https://x.example/login?u=bob&p=pa%2Bss%2Fword%3D%3D and raw pa+ss/word=="
    assert logconfig.redact(text, [secret]) == "https://x.example/login?u=bob&p=*** and raw ***"


@pytest.mark.parametrize("raw, expected", [
    ("GET https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdefghijklmnopqrstuvwx failed",
     "GET https://hooks.slack.com/services/*** failed"),
    ("POST https://discord.com/api/webhooks/123456789012345678/AbC-dEf_123 -> 429",
     "POST https://discord.com/api/webhooks/123456789012345678/*** -> 429"),
    ("https://chat.example.com/hooks/xi3ofbwq5jgp8kcs7r5ioukzch ok",
     "https://chat.example.com/hooks/*** ok"),
    ("https://am.example/api?token=abc123&user=bob&apikey=zzz",
     "https://am.example/api?token=***&user=bob&apikey=***"),
    ("https://x.example/p?X-Amz-Signature=deadbeef&sig=1&client_secret=2&password=3",
     "https://x.example/p?X-Amz-Signature=***&sig=***&client_secret=***&password=***"),
    ("connect https://bob:hunter2@alerts.example:8443/hook",
     "connect https://bob:***@alerts.example:8443/hook"),
    ("Authorization: Bearer eyJhbGciOi.abc.def next",
     "Authorization: Bearer *** next"),
    ("'Authorization': 'GenieKey 3f1b2c4d-0000-4000-8000-00000000beef'",  # Opsgenie
     "'Authorization': 'GenieKey ***'"),
    ('{"authorization": "opaque-token-value"}',
     '{"authorization": "***"}'),
    ("ws://emulator:8081/api/audit/v1/events/ and http://127.0.0.1:9108/metrics",
     "ws://emulator:8081/api/audit/v1/events/ and http://127.0.0.1:9108/metrics"),
])
def test_secret_looking_url_and_header_parts(raw: str, expected: str) -> None:
    assert logconfig.redact(raw) == expected


def test_webhook_url_in_log_args_and_exception_is_redacted() -> None:
    out = configured("text")
    url = "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdefghijklmnopqrstuvwx"
    log = logging.getLogger("eventd.actions.webhook")
    try:
        raise ConnectionError(f"Max retries exceeded with url: {url}")
    except ConnectionError:
        log.error("webhook %s failed", url, exc_info=True)
    text = out.getvalue()
    assert "abcdefghijklmnopqrstuvwx" not in text
    assert text.count("https://hooks.slack.com/services/***") == 2


FORGED = "Stopped\n2026-11-27T00:00:00Z ERROR eventd.daemon: credentials rejected\r\x1b[2K\u2028x"
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def test_event_data_cannot_forge_a_text_log_line() -> None:
    out = configured("text")
    logging.getLogger("eventd.engine").warning("rule %s: event state %s", "r", FORGED)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "Stopped\\n2026-11-27T00:00:00Z ERROR eventd.daemon: credentials rejected\\r\\x1b[2K\\u2028x" \
        in lines[0]


def test_bidirectional_overrides_cannot_reorder_a_log_line() -> None:
    out = configured("text")
    logging.getLogger("eventd.engine").warning("container %s", "web\u202e1-bew\u2066x\u2069")
    assert out.getvalue().rstrip("\n").endswith("container web\\u202e1-bew\\u2066x\\u2069")


def test_a_traceback_stays_below_its_record_and_cannot_start_one() -> None:
    out = configured("text")
    try:
        raise ValueError(FORGED)
    except ValueError:
        logging.getLogger("eventd.engine").exception("failed")
    lines = out.getvalue().splitlines()
    assert RECORD_START.match(lines[0]) and lines[0].endswith("failed")
    assert len(lines) > 2 and all(line.startswith("  ") for line in lines[1:]), lines
    assert not any(RECORD_START.match(line) for line in lines[1:])


def test_json_lines_keep_the_data_as_is() -> None:
    out = configured("json")
    logging.getLogger("eventd.engine").warning("state %s", "a\nb")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["message"] == "state a\nb"


def test_a_short_secret_is_masked_where_it_stands_not_inside_other_words() -> None:
    """The emulator's apikey is `apikey`: a path like /run/secrets/demo-apikey.txt must stay
    readable (issue 21.5), while the key itself is masked wherever it stands alone."""
    redact = logconfig.redact
    secrets = ["apikey"]
    assert redact("from /run/secrets/demo-apikey.txt", secrets) == "from /run/secrets/demo-apikey.txt"
    assert redact("DOCKERCLOUD_APIKEY_FILE, apikey_file", secrets) == "DOCKERCLOUD_APIKEY_FILE, apikey_file"
    for leaked, masked in [('{"key": "apikey"}', '{"key": "***"}'), ("user:apikey@h", "user:***@h"),
                           ("bad key apikey.", "bad key ***."), ("k=apikey&x=1", "k=***&x=1")]:
        assert redact(leaked, secrets) == masked
    long_secret = "0123456789abcdef"  # a real key's length: masked even inside other text
    assert redact(f"x{long_secret}y", [long_secret]) == "x***y"
