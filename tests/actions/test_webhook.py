"""The webhook action against a real receiver."""

from __future__ import annotations

import pytest

from eventd.actions.webhook import WebhookAction, origin
from eventd.errors import PermanentActionError, RetryableActionError
from tests.actions import attempt, make_context, make_job


@pytest.fixture
def hook(metrics):
    action = WebhookAction(make_context(metrics))
    yield action
    action.close()


def test_json_body_with_idempotency_key(hook, webhook_receiver):
    job = make_job(hook, {"url": webhook_receiver.url + "/in?token=x", "json": {"text": "hi"},
                          "headers": {"X-Team": "ops"}})
    assert attempt(hook, job).endswith("HTTP 200")
    [request] = webhook_receiver.requests
    assert (request.method, request.path) == ("POST", "/in?token=x")
    assert request.header("Idempotency-Key") == job.id
    assert request.header("Content-Type") == "application/json"
    assert request.header("X-Team") == "ops"
    assert request.json() == {"text": "hi"}


def test_text_body_and_method(hook, webhook_receiver):
    attempt(hook, make_job(hook, {"url": webhook_receiver.url, "method": "put", "body": "héllo"}))
    [request] = webhook_receiver.requests
    assert request.method == "PUT"
    assert request.body == "héllo".encode()
    assert request.header("Content-Type").startswith("text/plain")


def test_a_body_event_data_made_no_utf8_is_permanent_and_sends_nothing(hook, webhook_receiver):
    with pytest.raises(PermanentActionError, match="not valid UTF-8"):  # before: retried for ever
        attempt(hook, make_job(hook, {"url": webhook_receiver.url, "body": "name \ud800"}))
    attempt(hook, make_job(hook, {"url": webhook_receiver.url, "json": {"name": "\ud800"}}))
    [request] = webhook_receiver.requests  # JSON escapes it (\\ud800): that one is sent
    assert request.body == b'{"name":"\\ud800"}'


def test_failures_are_classified(hook, webhook_receiver):
    webhook_receiver.respond_with(503)
    with pytest.raises(RetryableActionError):
        attempt(hook, make_job(hook, {"url": webhook_receiver.url, "json": {}}))
    webhook_receiver.respond_with(404)
    with pytest.raises(PermanentActionError):
        attempt(hook, make_job(hook, {"url": webhook_receiver.url, "json": {}}))
    webhook_receiver.stop()
    fresh = WebhookAction(hook.context)  # the receiver keeps serving open keep-alive connections
    try:
        with pytest.raises(RetryableActionError, match="connection failed") as info:
            attempt(fresh, make_job(fresh, {"url": webhook_receiver.url + "/s3cr3t", "json": {}}))
    finally:
        fresh.close()
    assert "s3cr3t" not in str(info.value)


def test_target_is_per_host_without_path_query_or_credentials(hook):
    assert hook.target({"url": "https://u:pw@hooks.slack.com/services/T/B/XYZ?a=1"}) == \
        "webhook:https://hooks.slack.com:443"
    assert hook.target({"url": "http://127.0.0.1:8080/x"}) == "webhook:http://127.0.0.1:8080"
    assert origin("ftp://x/") == "invalid"


def test_validate():
    v = WebhookAction.validate
    assert v({"url": "https://example.com/hook", "json": {}}) == []
    assert v({"url": "{{ env.HOOK }}"}) == []
    assert v({"url": "example.com"}) == ["url must be an http:// or https:// URL"]
    assert v({"url": "http://x/", "json": {}, "body": "b"}) == ["give either json or body, not both"]
    assert v({"url": "http://x/", "method": "FETCH"}) != []
    assert v({"url": "http://x/", "timeout": 0}) == ["timeout must be a positive number of seconds"]


def test_a_url_climbing_out_of_its_path_is_refused_without_a_request(hook, webhook_receiver):
    for path in ("/hooks/../admin", "/hooks/%2e%2e/admin", "/hooks/./x/..", "/.."):
        with pytest.raises(PermanentActionError, match="refused, no request made"):
            attempt(hook, make_job(hook, {"url": webhook_receiver.url + path, "json": {}}))
    assert webhook_receiver.requests == []


def test_allow_host_limits_where_webhooks_and_alerts_go(metrics, webhook_receiver):
    from eventd.actions.alertmanager import AlertmanagerAction
    from eventd.settings import Settings

    settings = Settings(allow_hosts=("hooks.example.com", "*.internal"))
    context = make_context(metrics)
    context.settings = settings
    hook, alerts = WebhookAction(context), AlertmanagerAction(context)
    try:
        with pytest.raises(PermanentActionError, match="host '127.0.0.1' is not allowed"):
            attempt(hook, make_job(hook, {"url": webhook_receiver.url, "json": {}}))
        with pytest.raises(PermanentActionError, match="not allowed by --allow-host"):
            attempt(alerts, make_job(alerts, {"url": webhook_receiver.url}))
        assert webhook_receiver.requests == []
        context.settings = Settings(allow_hosts=("127.0.0.*",))
        attempt(hook, make_job(hook, {"url": webhook_receiver.url, "json": {}}))
        assert len(webhook_receiver.requests) == 1
    finally:
        hook.close()
        alerts.close()


def test_allow_host_from_the_command_line_and_the_environment():
    from eventd.cli import _settings, build_parser

    args = build_parser().parse_args(["run", "--allow-host", "a.example", "--allow-host", "*.b"])
    assert _settings(args, {}).allow_hosts == ("a.example", "*.b")
    args = build_parser().parse_args(["run"])
    assert _settings(args, {"EVENTD_ALLOW_HOSTS": "x.example, *.y"}).allow_hosts == \
        ("x.example", "*.y")
    assert _settings(args, {}).allow_hosts == ()


def test_log_lines_name_the_path_but_no_secret_part_of_the_url() -> None:
    """Issue 21.5: webhook lines named only host:port; now the path too, never the query, the
    user info or a token-like segment."""
    from eventd.actions.webhook import loggable

    assert loggable("http://127.0.0.1:9099/alerts") == "http://127.0.0.1:9099/alerts"
    assert loggable("https://u:pw@hooks.example.com/team-a/alerts?token=abc") == \
        "https://hooks.example.com:443/team-a/alerts?..."
    assert loggable("https://hooks.slack.com/services/T0001/B0002/abcdefghijklmnopqrstuvwx") == \
        "https://hooks.slack.com:443/services/***"
    assert loggable("https://h/hook/3f9a0c7e1b2d4e5f6a7b8c9d0e/x") == "https://h:443/hook/***/x"
    assert loggable("https://h/api/secret-token/send") == "https://h:443/api/***/send"
    assert loggable("ftp://x/") == "invalid"


_PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE", "NETRC")


def test_sessions_read_the_environment_once_unless_a_proxy_or_netrc_needs_more(monkeypatch,
                                                                              tmp_path):
    from eventd.clients.http import environment_settings, new_session

    for name in _PROXY_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert environment_settings() == (False, None)
    session = new_session()
    assert session.trust_env is False and session.verify is True
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "curl.pem"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    session = new_session()  # the bundle requests would pick, without asking per request
    assert session.trust_env is False and session.verify == str(tmp_path / "ca.pem")
    (tmp_path / ".netrc").write_text("machine example.org login a password b\n")
    assert environment_settings() == (True, None)  # requests keeps looking, as before
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    session = new_session()
    assert session.trust_env is True and session.verify is True


def test_a_proxy_in_the_environment_is_still_used(metrics, webhook_receiver, monkeypatch):
    for name in _PROXY_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("http_proxy", webhook_receiver.url)  # the receiver plays the proxy
    action = WebhookAction(make_context(metrics))
    try:
        attempt(action, make_job(action, {"url": webhook_receiver.url + "/via", "json": {}}))
    finally:
        action.close()
    [request] = webhook_receiver.requests
    assert request.path == webhook_receiver.url + "/via"  # a proxy's absolute-form target
