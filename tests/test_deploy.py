"""The files in deploy/ parse, and agree with the code and with each other.

Ports, health paths, flags, environment variable names, paths and exit codes are read from
eventd itself, so renaming a flag or a path in the code fails here, not in production.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventd.ops import health
from eventd.settings import Settings, parse_addr, parse_duration

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
RULES_DIR = "/etc/eventd/rules"
STATE_DIR = "/var/lib/eventd"
DOCKER_DEFAULT_GRACE = 10.0  # `docker stop` sends SIGKILL this long after SIGTERM


# -- readers -----------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, rest = whole.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends in a continuation line"
    return instructions


def docker(keyword: str) -> list[str]:
    return [rest for key, rest in dockerfile() if key == keyword]


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in docker("ENV"):
        for item in shlex.split(rest):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def exec_form(rest: str) -> list[str]:
    """`["a", "b"]` as Docker reads it (JSON); shell form is not allowed for CMD here."""
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def docker_cmd() -> list[str]:
    (cmd,) = docker("CMD")
    return exec_form(cmd)


def healthcheck_cmd() -> list[str]:
    (rest,) = docker("HEALTHCHECK")
    _, _, command = rest.partition("CMD ")
    return exec_form(command)


def yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s(kind: str) -> dict[str, Any]:
    found = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml_docs(path)
             if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/kubernetes, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = k8s("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return only  # type: ignore[no-any-return]


def compose() -> dict[str, Any]:
    (doc,) = yaml_docs(DEPLOY / "docker-compose.yml")
    return doc  # type: ignore[no-any-return]


def stackfile() -> dict[str, Any]:
    (doc,) = yaml_docs(DEPLOY / "docker-cloud.yml")
    return doc  # type: ignore[no-any-return]


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "eventd.service").read_text())
    return parser


def unit_exec_start() -> list[str]:
    return shlex.split(unit()["Service"]["ExecStart"])


def eventd_run_commands() -> dict[str, list[str]]:
    """Every `eventd run` command line in deploy/, by where it is, without the program name."""
    commands = {
        "Dockerfile CMD": docker_cmd(),
        "kubernetes args": [str(a) for a in container()["args"]],
        "systemd ExecStart": unit_exec_start(),
    }
    for where, argv in commands.items():
        assert Path(argv[0]).name == "eventd" and argv[1] == "run", (where, argv)
    return {where: argv[1:] for where, argv in commands.items()}


def flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def cli_parser() -> argparse.ArgumentParser:
    cli = pytest.importorskip("eventd.cli")
    try:
        parser: argparse.ArgumentParser = cli.build_parser()
    except ImportError as exc:  # a subcommand's module is not written yet
        pytest.skip(f"eventd.cli.build_parser() cannot import everything yet: {exc}")
    return parser


# -- every file parses -------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in
                                        [*DEPLOY.glob("*.yml"), *K8S.glob("*.yaml")]))
def test_yaml_files_parse(path: str) -> None:
    assert yaml_docs(ROOT / path)


def test_dockerfile_shape() -> None:
    # The base is a build argument (a registry-less machine imports its own); by default slim.
    assert "BASE=python:3.11-slim" in docker("ARG")
    assert [rest.split()[0] for rest in docker("FROM")] == ["${BASE}", "${BASE}"]
    assert any("--require-hashes" in run and "requirements/runtime.txt" in run
               for run in docker("RUN"))
    assert docker("USER") == ["10001:10001"]
    assert any("--uid 10001" in run and "eventd" in run for run in docker("RUN"))
    assert docker("STOPSIGNAL") == ["SIGTERM"]
    assert exec_form(docker("VOLUME")[0]) == [STATE_DIR]
    assert any(rest.split()[-1].rstrip("/") == RULES_DIR for rest in docker("COPY"))
    # No secrets baked into the image.
    assert not [name for name in docker_env() if name.startswith("DOCKERCLOUD_")]
    assert docker_env()["MALLOC_ARENA_MAX"] == "2"  # issue 10's memory budget


def test_dockerignore_keeps_the_virtualenv_out_but_lets_copied_paths_in() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*"
    for rest in docker("COPY"):
        if rest.startswith("--from="):
            continue  # from the build stage, not the context
        for source in rest.split()[:-1]:
            assert f"!{source.rstrip('/')}" in {i.rstrip("/") for i in ignore}, source


def test_systemd_unit_parses_with_the_hardening_asked_for() -> None:
    service = unit()["Service"]
    for key, value in {"DynamicUser": "yes", "ProtectSystem": "strict", "StateDirectory": "eventd",
                       "ConfigurationDirectory": "eventd", "NoNewPrivileges": "yes",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "Restart": "on-failure",
                       "ExecReload": "/bin/kill -HUP $MAINPID",
                       "EnvironmentFile": "-/etc/eventd/eventd.env"}.items():
        assert service[key] == value, key
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


# -- one port, one set of paths ----------------------------------------------------------
def test_metrics_port_is_the_same_everywhere() -> None:
    port = health.DEFAULT_PORT
    assert docker("EXPOSE") == [str(port)]
    for where, argv in eventd_run_commands().items():
        assert parse_addr(flag(argv, "--metrics-addr"))[1] == port, where
    assert parse_addr(docker_env()["EVENTD_METRICS_ADDR"])[1] == port
    assert f"'0.0.0.0:{port}'" in healthcheck_cmd()[-1]  # EVENTD_METRICS_ADDR's default
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"metrics": port}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container()[probe]["httpGet"]["port"] in ("metrics", port)
    service = k8s("Service")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, "metrics")]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    eventd = compose()["services"]["eventd"]
    assert f"127.0.0.1:{port}:{port}" in eventd["ports"]
    assert stackfile()["eventd"]["expose"] == [str(port)]


def test_health_paths_exist_in_eventd_health() -> None:
    assert container()["livenessProbe"]["httpGet"]["path"] == health.HEALTH_PATH
    assert container()["readinessProbe"]["httpGet"]["path"] == health.READY_PATH
    assert k8s("Service")["metadata"]["annotations"]["prometheus.io/path"] == health.METRICS_PATH
    # Annotated once, on the Service: a pod annotation too would be scraped twice.
    assert "annotations" not in k8s("Deployment")["spec"]["template"]["metadata"]
    assert f"{{port}}{health.HEALTH_PATH}'" in healthcheck_cmd()[-1]


def test_rules_and_state_paths_agree() -> None:
    for where, argv in eventd_run_commands().items():
        assert flag(argv, "--rules") == RULES_DIR, where
        assert flag(argv, "--state-dir") == STATE_DIR, where
    env = docker_env()
    assert env["EVENTD_RULES"] == RULES_DIR and env["EVENTD_STATE_DIR"] == STATE_DIR
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    assert mounts["rules"] == RULES_DIR and mounts["state"] == STATE_DIR
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert volumes["rules"]["configMap"]["name"] == k8s("ConfigMap")["metadata"]["name"]
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == \
        k8s("PersistentVolumeClaim")["metadata"]["name"]
    # systemd: StateDirectory=eventd is /var/lib/eventd; ConfigurationDirectory=eventd, /etc/eventd.
    service = unit()["Service"]
    assert STATE_DIR == "/var/lib/" + service["StateDirectory"]
    assert RULES_DIR.startswith("/etc/" + service["ConfigurationDirectory"] + "/")
    assert f"{STATE_DIR}" in compose()["services"]["eventd"]["volumes"][0]
    assert stackfile()["eventd"]["volumes"] == [STATE_DIR]


# -- environment variables ---------------------------------------------------------------
def secret_file_names() -> set[str]:
    """`NAME_FILE` for each secret eventd reads from a file (sources' settings.SECRET_FILE_VARIABLES)."""
    import eventd.settings

    names = getattr(eventd.settings, "SECRET_FILE_VARIABLES", None)
    if names is None:
        pytest.skip("eventd does not read DOCKERCLOUD_*_FILE yet (issue 13, sources' item)")
    return {f"{name}_FILE" for name in names}


def dockercloud_names_eventd_reads() -> set[str]:
    """DOCKERCLOUD_* names as string literals in the daemon's code (not the emulator's or the
    demo's), and the `_FILE` form of those it reads from files."""
    names: set[str] = set()
    for path in (ROOT / "eventd").rglob("*.py"):
        if "emulator" in path.parts or "demo" in path.parts:
            continue
        names |= set(re.findall(r"[\"'](DOCKERCLOUD_[A-Z_]+)[\"']", path.read_text()))
    return names


def test_eventd_reads_the_documented_names() -> None:
    assert {"DOCKERCLOUD_AUTH", "DOCKERCLOUD_USER", "DOCKERCLOUD_APIKEY", "DOCKERCLOUD_PASS",
            "DOCKERCLOUD_NAMESPACE", "DOCKERCLOUD_REST_HOST", "DOCKERCLOUD_STREAM_HOST",
            "DOCKERCLOUD_STREAM_URL"} <= dockercloud_names_eventd_reads()


def test_every_dockercloud_name_in_deploy_is_one_eventd_reads() -> None:
    known = dockercloud_names_eventd_reads()
    used: dict[str, set[str]] = {}
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            for name in re.findall(r"\bDOCKERCLOUD_[A-Z_]+", path.read_text()):
                used.setdefault(name, set()).add(path.name)
    assert used, "no DOCKERCLOUD_ names found at all"
    if any(name.endswith("_FILE") for name in used):
        known |= secret_file_names()
    unknown = {name: files for name, files in used.items() if name not in known}
    assert not unknown, f"names eventd does not read: {unknown}"


def secret_file_names_of_eventd() -> tuple[str, ...]:
    import eventd.settings

    return tuple(eventd.settings.SECRET_FILE_VARIABLES)


def test_every_eventd_name_in_deploy_is_one_the_cli_or_the_rules_read() -> None:
    cli_source = (ROOT / "eventd" / "cli.py")
    if not cli_source.exists():
        pytest.skip("eventd/cli.py not written yet")
    read = set(re.findall(r"[\"'](EVENTD_[A-Z_]+)[\"']", cli_source.read_text()))
    # Settings.from_env reads the rest, and the `_FILE` form of its secrets
    read |= set(re.findall(r"[\"'](EVENTD_[A-Z_]+)[\"']",
                           (ROOT / "eventd" / "settings.py").read_text()))
    read |= {f"{name}_FILE" for name in secret_file_names_of_eventd() if name.startswith("EVENTD_")}
    for rule_file in (ROOT / "rules").rglob("*.yaml"):
        read |= set(re.findall(r"\$\{(EVENTD_[A-Z_]+)", rule_file.read_text()))
    used = {name for path in DEPLOY.rglob("*") if path.is_file()
            for name in re.findall(r"\bEVENTD_[A-Z_]+", path.read_text())}
    assert used and used <= read, used - read


def test_kubernetes_secret_keys_and_references_agree() -> None:
    secret = k8s("Secret")
    keys = set(secret["stringData"])
    for item in container()["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            continue
        assert ref["name"] == secret["metadata"]["name"] == "eventd-credentials"
        assert item["name"] == ref["key"]
        assert ref["key"] in keys or ref.get("optional") is True, ref
    env = {item["name"]: item for item in container()["env"]}
    # The key comes from the Secret mounted as files, never from the environment.
    assert "DOCKERCLOUD_APIKEY" not in env and "DOCKERCLOUD_AUTH" not in env
    mounts = {m["name"]: m for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    (name,) = [n for n, v in volumes.items() if v.get("secret", {}).get("secretName") ==
               secret["metadata"]["name"]]
    assert mounts[name]["readOnly"] is True
    assert volumes[name]["secret"]["defaultMode"] & 0o007 == 0  # nobody else
    path = Path(env["DOCKERCLOUD_APIKEY_FILE"]["value"])
    assert path.parent == Path(mounts[name]["mountPath"]) and path.name in keys
    # The placeholder secret is a complete set: USER + the key's file load as credentials.
    from eventd.clients.dockercloud.auth import load_credentials

    creds = load_credentials({"DOCKERCLOUD_USER": secret["stringData"]["DOCKERCLOUD_USER"],
                              "DOCKERCLOUD_APIKEY": secret["stringData"][path.name]},
                             home=Path("/nonexistent"))
    assert creds.source == "DOCKERCLOUD_USER+DOCKERCLOUD_APIKEY"


def test_compose_points_eventd_at_the_emulator_with_its_credentials() -> None:
    services = compose()["services"]
    emulator_cmd = [str(a) for a in services["emulator"]["command"]]
    env = services["eventd"]["environment"]
    assert env["DOCKERCLOUD_USER"] == flag(emulator_cmd, "--user")
    # The key is a compose secret, mounted where DOCKERCLOUD_APIKEY_FILE points.
    assert "DOCKERCLOUD_APIKEY" not in env
    secret = Path(env["DOCKERCLOUD_APIKEY_FILE"])
    assert secret.parent == Path("/run/secrets") and secret.name in services["eventd"]["secrets"]
    key_file = DEPLOY / compose()["secrets"][secret.name]["file"]
    assert key_file.read_text().strip() == flag(emulator_cmd, "--apikey")
    settings = Settings.from_env(env)
    assert settings.rest_host == f"http://emulator:{flag(emulator_cmd, '--rest-port')}/"
    assert settings.stream_host == f"ws://emulator:{flag(emulator_cmd, '--stream-port')}/"
    from eventd.emulator.cli import scenario_file

    assert Path(str(scenario_file(flag(emulator_cmd, "--scenario")))).is_file()  # shipped, by name
    receiver_cmd = [str(a) for a in services["receiver"]["command"]]
    assert receiver_cmd[:2] == ["eventd", "receive"]
    receiver = cli_parser().parse_args(receiver_cmd[1:])
    assert receiver.host == "0.0.0.0"
    assert env["ALERT_WEBHOOK_URL"].startswith(f"http://receiver:{receiver.port}/")


def test_stackfile_follows_the_docker_cloud_rules() -> None:
    service = stackfile()["eventd"]
    assert service["image"]
    assert service["roles"] == ["global"]  # DOCKERCLOUD_AUTH is injected
    assert service["target_num_containers"] == 1
    assert service["restart"] == "always" and service["autodestroy"] == "no"
    assert not {"build", "external_links", "env_file"} & set(service)
    env = dict(item.split("=", 1) for item in service["environment"])
    assert not {"DOCKERCLOUD_AUTH", "DOCKERCLOUD_APIKEY", "DOCKERCLOUD_PASS"} & set(env)


def test_kubernetes_runs_one_non_root_replica_read_only() -> None:
    spec = k8s("Deployment")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert k8s("Service")["spec"]["selector"].items() <= labels.items()
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True


# -- the code's flags, exit codes and timeouts -------------------------------------------
def test_every_eventd_run_flag_exists_in_the_cli() -> None:
    parser = cli_parser()
    for where, argv in eventd_run_commands().items():
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `eventd {' '.join(argv)}` is rejected by eventd.cli")
        assert args.command == "run", where


def test_the_compose_emulator_command_exists_in_the_cli() -> None:
    parser = cli_parser()
    argv = [str(a) for a in compose()["services"]["emulator"]["command"]]
    assert argv[0] == "eventd"
    try:
        parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{' '.join(argv)}` is rejected by eventd.cli")


def test_restart_prevent_exit_status_matches_the_cli_exit_codes() -> None:
    cli = pytest.importorskip("eventd.cli")
    codes = {int(c) for c in unit()["Service"]["RestartPreventExitStatus"].split()}
    assert codes == {cli.EXIT_CONFIG, cli.EXIT_AUTH} == {2, 3}


def test_shutdown_timeouts_fit_inside_each_grace_period() -> None:
    docker_timeout = parse_duration(flag(docker_cmd(), "--shutdown-timeout"))
    assert docker_timeout < DOCKER_DEFAULT_GRACE
    compose_grace = parse_duration(compose()["services"]["eventd"]["stop_grace_period"])
    assert compose_grace > docker_timeout
    k8s_timeout = parse_duration(flag([str(a) for a in container()["args"]], "--shutdown-timeout"))
    assert pod_spec()["terminationGracePeriodSeconds"] >= k8s_timeout + 5
    # systemd passes no --shutdown-timeout: eventd's default applies.
    assert "--shutdown-timeout" not in unit_exec_start()
    assert parse_duration(unit()["Service"]["TimeoutStopSec"]) >= Settings().shutdown_timeout + 3


def test_configmap_sample_rules_load(tmp_path: Path) -> None:
    rules = pytest.importorskip("eventd.ruleset.loader")
    for name, text in k8s("ConfigMap")["data"].items():
        (tmp_path / name).write_text(text)
    env = {item["name"]: item.get("value", "https://alerts.example/hook")
           for item in container()["env"]}
    assert rules.check_paths([tmp_path], env) == []
    assert len(rules.load_rules((tmp_path,), env)) >= 1


def test_image_rules_load_with_the_image_environment() -> None:
    rules = pytest.importorskip("eventd.ruleset.loader")
    env = {**docker_env(), "ALERT_WEBHOOK_URL": "https://alerts.example/hook"}
    assert rules.check_paths([ROOT / "rules"], env) == []


# -- secrets from files, private state ------------------------------------------------------
def test_no_deploy_file_passes_an_api_key_in_the_environment() -> None:
    """Kubernetes, compose and systemd hand the key over as a file (`DOCKERCLOUD_APIKEY_FILE`)."""
    assert "DOCKERCLOUD_APIKEY_FILE" in {item["name"] for item in container()["env"]}
    assert "DOCKERCLOUD_APIKEY_FILE" in compose()["services"]["eventd"]["environment"]
    service = unit()["Service"]
    assert service["LoadCredential"] == "dockercloud-apikey:/etc/eventd/dockercloud-apikey"
    assert service["Environment"] == "DOCKERCLOUD_APIKEY_FILE=%d/dockercloud-apikey"
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name != "secret.yaml":  # the Secret is where the key lives
            assert not re.search(r"\bDOCKERCLOUD_(APIKEY|AUTH)\s*[=:]\s*\S", path.read_text()), path
    assert {"DOCKERCLOUD_APIKEY_FILE", "DOCKERCLOUD_AUTH_FILE"} <= secret_file_names()


def test_the_state_directory_is_private_in_the_image_and_under_systemd() -> None:
    assert any("chown 10001:10001 /var/lib/eventd" in run and "chmod 0700 /var/lib/eventd" in run
               for run in docker("RUN"))
    service = unit()["Service"]
    assert service["StateDirectoryMode"] == "0700" and service["UMask"] == "0077"


def test_the_image_installs_the_sample_rules_into_the_package() -> None:
    """Installing /src in the image runs setup.py's copy of rules/: it must be in /src first."""
    steps = dockerfile()
    install = next(i for i, (key, rest) in enumerate(steps)
                   if key == "RUN" and re.search(r"pip install .*/src( |$)", rest))
    sources = {src.rstrip("/") for key, rest in steps[:install] if key == "COPY"
               for src in rest.split()[:-1]}
    assert {"setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "eventd", "rules"} <= sources


def test_configmap_holds_exactly_the_sample_rules() -> None:
    """The ConfigMap is a copy of rules/*.yaml: it must not drift from the one source."""
    shipped = {path.name: path.read_text() for path in sorted((ROOT / "rules").glob("*.yaml"))}
    assert k8s("ConfigMap")["data"] == shipped
