"""deploy/ for the docker source: the compose service and the systemd unit agree with the CLI,
the sample rules and each other, and hand eventd the Engine's socket read-only."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import yaml

from eventd.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def compose_eventd() -> dict:
    doc = yaml.safe_load((DEPLOY / "docker-compose.docker.yml").read_text())
    return doc["services"]["eventd"]


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "eventd-docker.service").read_text())
    return parser


def parsed(argv: list[str]):
    assert Path(argv[0]).name == "eventd" and argv[1] == "run", argv
    return build_parser().parse_args(argv[1:])


def rules_variables() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "rules" / "docker").glob("*.yaml"):
        names |= set(re.findall(r"\$\{([A-Z_]+)", path.read_text()))
    return names


def test_compose_runs_the_docker_source_on_the_sample_rules_with_the_socket_read_only():
    service = compose_eventd()
    args = parsed(service["command"])
    assert args.source == "docker"
    assert args.rules == [Path("/etc/eventd/rules/docker")]  # the image copies rules/ there
    socket = urlpath(service["environment"]["DOCKER_HOST"])
    assert f"{socket}:{socket}:ro" in service["volumes"]
    assert rules_variables() <= set(service["environment"])
    assert service["group_add"], "the image's uid needs the socket's group"


def test_the_unit_runs_the_docker_source_with_the_socket_read_only():
    service = unit()["Service"]
    args = parsed(shlex.split(service["ExecStart"]))
    assert args.source == "docker"
    assert args.rules == [Path("/etc/eventd/rules/docker")]
    assert str(args.state_dir) == "/var/lib/" + service["StateDirectory"]
    host = dict(item.split("=", 1) for item in shlex.split(service["Environment"]))["DOCKER_HOST"]
    assert service["BindReadOnlyPaths"] == urlpath(host)
    assert service["SupplementaryGroups"] == "docker"
    assert "AF_UNIX" in service["RestrictAddressFamilies"].split()
    assert service["RestartPreventExitStatus"] == "2"
    assert unit()["Unit"]["After"] == "docker.service"


def urlpath(host: str) -> str:
    assert host.startswith("unix://")
    return host[len("unix://"):]
