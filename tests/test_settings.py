"""Settings built from an injected environment: hosts, namespace, the stream URL."""

from __future__ import annotations

import pytest

from eventd.errors import ConfigError
from eventd.settings import Settings, parse_duration
from eventd.sources.dockercloud.stream import StreamOptions


def test_defaults_point_at_docker_cloud():
    settings = Settings.from_env({})
    assert settings.stream_url == "wss://ws.cloud.docker.com/api/audit/v1/events/"
    assert settings.rest_host == "https://cloud.docker.com/"


@pytest.mark.parametrize("host", ["ws://127.0.0.1:8765", "ws://127.0.0.1:8765/", "ws://127.0.0.1:8765//"])
def test_stream_host_with_or_without_trailing_slash_gives_one_url(host):
    settings = Settings.from_env({"DOCKERCLOUD_STREAM_HOST": host})
    assert settings.stream_url == "ws://127.0.0.1:8765/api/audit/v1/events/"


@pytest.mark.parametrize("namespace", ["acme", "/acme/", " acme"])
def test_namespace_goes_into_the_stream_path(namespace):
    settings = Settings.from_env({"DOCKERCLOUD_STREAM_HOST": "wss://ws.example/",
                                  "DOCKERCLOUD_NAMESPACE": namespace})
    assert settings.stream_url == "wss://ws.example/api/audit/v1/acme/events/"


def test_stream_host_wins_over_stream_url_as_in_go_sdk():
    env = {"DOCKERCLOUD_STREAM_HOST": "ws://a:1", "DOCKERCLOUD_STREAM_URL": "ws://b:2"}
    assert Settings.from_env(env).stream_url.startswith("ws://a:1/")
    assert Settings.from_env({"DOCKERCLOUD_STREAM_URL": "ws://b:2"}).stream_url.startswith("ws://b:2/")


def test_rest_url_joins_resource_uris():
    settings = Settings.from_env({"DOCKERCLOUD_REST_HOST": "http://127.0.0.1:9000"})
    assert settings.rest_url("/api/app/v1/service/x/") == "http://127.0.0.1:9000/api/app/v1/service/x/"


@pytest.mark.parametrize("variable,value", [
    ("DOCKERCLOUD_STREAM_HOST", "https://ws.example/"),
    ("DOCKERCLOUD_STREAM_HOST", "ws.example"),
    ("DOCKERCLOUD_REST_HOST", "wss://cloud.example/"),
])
def test_bad_host_names_the_variable_and_value(variable, value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert variable in str(info.value) and value in str(info.value)


def test_overrides_apply_and_unknown_ones_are_refused():
    settings = Settings.from_env({}, ping_interval=2.0, on_auth_error="wait", namespace=None)
    assert settings.ping_interval == 2.0 and settings.on_auth_error == "wait"
    with pytest.raises(TypeError):
        Settings.from_env({}, no_such_setting=1)


def test_stream_options_take_the_settings_timings():
    settings = Settings.from_env({}, ping_interval=3.0, pong_timeout=4.0, idle_timeout=50.0,
                                 backoff_initial=0.5, backoff_max=9.0, healthy_after=7.0,
                                 on_auth_error="wait", auth_error_wait=12.0)
    options = StreamOptions.from_settings(settings)
    assert (options.ping_interval, options.pong_timeout, options.idle_timeout) == (3.0, 4.0, 50.0)
    assert (options.backoff_initial, options.backoff_max, options.healthy_after) == (0.5, 9.0, 7.0)
    assert (options.on_auth_error, options.auth_error_wait) == ("wait", 12.0)
    assert options.user_agent.startswith("eventd/")


def test_stream_options_refuse_an_unknown_auth_policy():
    with pytest.raises(ValueError):
        StreamOptions(on_auth_error="retry")


@pytest.mark.parametrize("text,seconds", [("30", 30.0), ("30s", 30.0), ("500ms", 0.5),
                                          ("10m", 600.0), ("1h", 3600.0), (2, 2.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1s"])
def test_bad_durations_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_duration(text, "--ping-interval")


def test_store_password_from_a_file_is_kept_out_of_repr(tmp_path):
    path = tmp_path / "password"
    path.write_text("r3dis-pass\n")
    settings = Settings.from_env({"EVENTD_STORE_PASSWORD_FILE": str(path)})
    assert settings.store_password == "r3dis-pass"
    assert "r3dis-pass" not in repr(settings)
    assert Settings.from_env({"EVENTD_STORE_PASSWORD": "direct"}).store_password == "direct"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"EVENTD_STORE_PASSWORD_FILE": str(tmp_path / "missing")})
    assert "EVENTD_STORE_PASSWORD_FILE" in str(info.value)


def test_tls_options_come_from_the_environment(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings.from_env({"EVENTD_CA_FILE": str(ca)})
    assert settings.tls.ca_file == ca and settings.tls.client_cert is None
    assert StreamOptions.from_settings(settings).tls == settings.tls
    assert not Settings.from_env({}).tls.custom
