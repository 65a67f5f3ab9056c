"""Credential sources and their precedence, as the SDKs and CLI found them (reference 4.2)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from eventd.clients.dockercloud.auth import Credentials, load_credentials
from eventd.errors import CredentialsMissing


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def write_docker_config(home: Path, config: dict) -> None:
    (home / ".docker").mkdir(parents=True, exist_ok=True)
    (home / ".docker" / "config.json").write_text(json.dumps(config))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_dockercloud_auth_is_sent_as_is(home):
    creds = load_credentials({"DOCKERCLOUD_AUTH": "Bearer opaque-token"}, home)
    assert creds.header == "Bearer opaque-token"
    assert creds.source == "DOCKERCLOUD_AUTH"


def test_user_and_apikey_give_basic_auth(home):
    creds = load_credentials({"DOCKERCLOUD_USER": "alice", "DOCKERCLOUD_APIKEY": "k3y-value"}, home)
    assert creds.header == basic("alice", "k3y-value")
    assert creds.user == "alice"


def test_user_and_pass_give_basic_auth(home):
    creds = load_credentials({"DOCKERCLOUD_USER": "alice", "DOCKERCLOUD_PASS": "pa55word"}, home)
    assert creds.header == basic("alice", "pa55word")
    assert creds.source == "DOCKERCLOUD_USER+DOCKERCLOUD_PASS"


def test_docker_config_auth_entry(home):
    token = base64.b64encode(b"bob:hubsecret").decode()
    write_docker_config(home, {"auths": {"https://index.docker.io/v1/": {"auth": token}}})
    creds = load_credentials({}, home)
    assert creds.header == f"Basic {token}"
    assert creds.user == "bob"
    assert creds.source == "~/.docker/config.json"


def test_home_is_taken_from_the_environment(home):
    token = base64.b64encode(b"bob:hubsecret").decode()
    write_docker_config(home, {"auths": {"https://index.docker.io/v1/": {"auth": token}}})
    assert load_credentials({"HOME": str(home)}).header == f"Basic {token}"


def test_precedence_auth_then_apikey_then_pass_then_config(home):
    token = base64.b64encode(b"bob:hubsecret").decode()
    write_docker_config(home, {"auths": {"https://index.docker.io/v1/": {"auth": token}}})
    env = {"DOCKERCLOUD_AUTH": "Basic from-auth", "DOCKERCLOUD_USER": "alice",
           "DOCKERCLOUD_APIKEY": "the-apikey", "DOCKERCLOUD_PASS": "the-pass"}
    assert load_credentials(env, home).header == "Basic from-auth"
    del env["DOCKERCLOUD_AUTH"]
    assert load_credentials(env, home).header == basic("alice", "the-apikey")
    del env["DOCKERCLOUD_APIKEY"]
    assert load_credentials(env, home).header == basic("alice", "the-pass")
    del env["DOCKERCLOUD_PASS"]
    assert load_credentials(env, home).header == f"Basic {token}"


def test_user_alone_is_not_enough(home):
    with pytest.raises(CredentialsMissing):
        load_credentials({"DOCKERCLOUD_USER": "alice"}, home)


def test_nothing_found_names_every_source_looked_for(home):
    with pytest.raises(CredentialsMissing) as info:
        load_credentials({}, home)
    message = str(info.value)
    for name in ("DOCKERCLOUD_AUTH", "DOCKERCLOUD_APIKEY", "DOCKERCLOUD_PASS", "config.json"):
        assert name in message


def test_broken_docker_config_is_treated_as_absent(home):
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text("{not json")
    with pytest.raises(CredentialsMissing):
        load_credentials({}, home)


def test_creds_store_helper_on_path(home, tmp_path, monkeypatch):
    """A fake `docker-credential-x` answers like the real helpers do on `get`."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-fake"
    helper.write_text("#!/bin/sh\nread server\n"
                      "[ \"$server\" = \"https://index.docker.io/v1/\" ] || exit 1\n"
                      "echo '{\"ServerURL\":\"'$server'\",\"Username\":\"carol\","
                      "\"Secret\":\"st0re-secret\"}'\n")
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    write_docker_config(home, {"credsStore": "fake", "auths": {"https://index.docker.io/v1/": {}}})
    creds = load_credentials({}, home)
    assert creds.header == basic("carol", "st0re-secret")
    assert creds.source == "credsStore fake"


def test_missing_creds_store_helper_falls_back_to_the_auths_entry(home):
    token = base64.b64encode(b"bob:hubsecret").decode()
    write_docker_config(home, {"credsStore": "does-not-exist-anywhere",
                               "auths": {"https://index.docker.io/v1/": {"auth": token}}})
    assert load_credentials({}, home).header == f"Basic {token}"


def test_repr_and_str_never_show_the_secret():
    creds = Credentials.basic("alice", "the-apikey", "DOCKERCLOUD_USER+DOCKERCLOUD_APIKEY")
    token = creds.header.split()[1]
    for text in (repr(creds), str(creds), f"{creds}"):
        assert "the-apikey" not in text and token not in text
    assert set(creds.secrets()) == {creds.header, token, "the-apikey"}


# -- rejected credentials, as a user meets them ----------------------------------------------

def _eventd(*args: str, env: dict[str, str]) -> subprocess.Popen:
    full = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "eventd", *args], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_on_auth_error_wait_tries_exactly_once_more_then_exits_3(emulator, tmp_path):
    from tests.daemon_helpers import emulator_env, write_rules

    rules = write_rules(tmp_path / "rules", "rules: []\n")
    emulator.faults.reject_auth(True)
    proc = _eventd("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                   "--on-auth-error", "wait", "--auth-error-wait", "1s", env=emulator_env(emulator))
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 3, err
    assert [h.status for h in emulator.handshakes()] == [401, 401]
    assert "rejected again" in err
    assert emulator.auth_header.split()[1] not in out + err


# -- secrets from files (the _FILE convention of Docker secrets and Kubernetes) --------------

def secret_file(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def test_auth_file_is_read_and_named_as_the_source(home, tmp_path):
    path = secret_file(tmp_path, "auth", "Bearer from-a-file\n")
    creds = load_credentials({"DOCKERCLOUD_AUTH_FILE": str(path)}, home)
    assert creds.header == "Bearer from-a-file"
    assert creds.source == "DOCKERCLOUD_AUTH_FILE"


def test_apikey_file_with_the_user(home, tmp_path):
    path = secret_file(tmp_path, "apikey", "k3y-in-file")
    creds = load_credentials({"DOCKERCLOUD_USER": "alice", "DOCKERCLOUD_APIKEY_FILE": str(path)},
                             home)
    assert creds.header == basic("alice", "k3y-in-file")
    assert creds.source == "DOCKERCLOUD_USER+DOCKERCLOUD_APIKEY_FILE"


def test_a_file_keeps_the_precedence_of_its_variable(home, tmp_path):
    env = {"DOCKERCLOUD_AUTH_FILE": str(secret_file(tmp_path, "auth", "Basic from-file")),
           "DOCKERCLOUD_USER": "alice", "DOCKERCLOUD_APIKEY": "the-apikey"}
    assert load_credentials(env, home).header == "Basic from-file"


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "both"])
def test_unusable_secret_file_names_the_variable_never_the_content(home, tmp_path, case):
    path = {"missing": tmp_path / "nope",
            "directory": tmp_path,
            "empty": secret_file(tmp_path, "empty", " \n"),
            "both": secret_file(tmp_path, "auth", "Bearer s3cret-token")}[case]
    env = {"DOCKERCLOUD_AUTH_FILE": str(path)}
    if case == "both":
        env["DOCKERCLOUD_AUTH"] = "Bearer other-s3cret"
    with pytest.raises(CredentialsMissing) as info:
        load_credentials(env, home)
    message = str(info.value)
    assert "DOCKERCLOUD_AUTH" in message
    assert "s3cret" not in message


def test_unreadable_secret_file_is_exit_2_naming_the_variable(tmp_path):
    path = secret_file(tmp_path, "apikey", "the-secret-apikey-value")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: use a path that cannot be opened
        path = tmp_path / "missing-apikey"
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    proc = _eventd("run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                   env={"HOME": str(tmp_path), "DOCKERCLOUD_USER": "alice",
                        "DOCKERCLOUD_APIKEY_FILE": str(path)})
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, err
    assert "DOCKERCLOUD_APIKEY_FILE" in err and str(path) in err
    assert "the-secret-apikey-value" not in out + err
    assert "Traceback" not in err
