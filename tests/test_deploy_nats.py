"""deploy/docker-compose.nats.yml: checked rather than run (no registry for the nats images
here), the way tests/test_deploy_postgres.py checks its compose file."""

from __future__ import annotations

from pathlib import Path

import yaml

from eventd.cli import build_parser
from eventd.ruleset.loader import load_rules

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def compose():
    return yaml.safe_load((DEPLOY / "docker-compose.nats.yml").read_text())


def test_the_stream_is_made_before_eventd_with_the_subjects_its_rules_publish_to():
    services = compose()["services"]
    assert services["eventd"]["depends_on"]["stream"] == {
        "condition": "service_completed_successfully"}
    script = " ".join(services["stream"]["command"])
    assert "--subjects 'docker.>'" in script and "--dupe-window" in script
    assert "--jetstream" in services["nats"]["command"]


def test_eventds_command_parses_and_its_rules_publish_to_nats_with_its_environment():
    eventd = compose()["services"]["eventd"]
    parsed = build_parser().parse_args(eventd["command"][1:])
    assert [str(p) for p in parsed.rules] == ["/etc/eventd/rules",
                                              "/etc/eventd/rules/bus/nats.yaml"]
    env = {name: str(value) for name, value in eventd["environment"].items()
           if not name.startswith("<")}
    ruleset = load_rules([ROOT / "rules", ROOT / "rules" / "bus" / "nats.yaml"], env)
    nats = [spec.options for rule in ruleset.rules for spec in rule.actions
            if spec.kind == "nats"]
    assert nats and all(o["url"] == "nats://nats:4222" for o in nats)
    assert all(o["subject"].startswith("docker.") for o in nats)
    assert not parsed.allow_plaintext  # no credentials go in clear: none is needed
