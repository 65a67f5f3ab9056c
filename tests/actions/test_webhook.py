"""The webhook action against a real receiver."""

from __future__ import annotations

import pytest

from eventd.actions.webhook import WebhookAction, origin
from eventd.errors import PermanentActionError, RetryableActionError
from tests.actions import make_context, make_job


@pytest.fixture
def hook(metrics):
    action = WebhookAction(make_context(metrics))
    yield action
    action.close()


def test_json_body_with_idempotency_key(hook, webhook_receiver):
    job = make_job(hook, {"url": webhook_receiver.url + "/in?token=x", "json": {"text": "hi"},
                          "headers": {"X-Team": "ops"}})
    assert hook.run(job).endswith("HTTP 200")
    [request] = webhook_receiver.requests
    assert (request.method, request.path) == ("POST", "/in?token=x")
    assert request.header("Idempotency-Key") == job.id
    assert request.header("Content-Type") == "application/json"
    assert request.header("X-Team") == "ops"
    assert request.json() == {"text": "hi"}


def test_text_body_and_method(hook, webhook_receiver):
    hook.run(make_job(hook, {"url": webhook_receiver.url, "method": "put", "body": "héllo"}))
    [request] = webhook_receiver.requests
    assert request.method == "PUT"
    assert request.body == "héllo".encode()
    assert request.header("Content-Type").startswith("text/plain")


def test_failures_are_classified(hook, webhook_receiver):
    webhook_receiver.respond_with(503)
    with pytest.raises(RetryableActionError):
        hook.run(make_job(hook, {"url": webhook_receiver.url, "json": {}}))
    webhook_receiver.respond_with(404)
    with pytest.raises(PermanentActionError):
        hook.run(make_job(hook, {"url": webhook_receiver.url, "json": {}}))
    webhook_receiver.stop()
    fresh = WebhookAction(hook.context)  # the receiver keeps serving open keep-alive connections
    try:
        with pytest.raises(RetryableActionError, match="connection failed") as info:
            fresh.run(make_job(fresh, {"url": webhook_receiver.url + "/s3cr3t", "json": {}}))
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
            hook.run(make_job(hook, {"url": webhook_receiver.url + path, "json": {}}))
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
            hook.run(make_job(hook, {"url": webhook_receiver.url, "json": {}}))
        with pytest.raises(PermanentActionError, match="not allowed by --allow-host"):
            alerts.run(make_job(alerts, {"url": webhook_receiver.url}))
        assert webhook_receiver.requests == []
        context.settings = Settings(allow_hosts=("127.0.0.*",))
        hook.run(make_job(hook, {"url": webhook_receiver.url, "json": {}}))
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
