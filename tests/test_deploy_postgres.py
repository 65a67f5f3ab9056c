"""deploy/docker-compose.postgres.yml: checked rather than run (no registry for postgres:16
here), the way tests/test_deploy.py checks the other compose file."""

from __future__ import annotations

from pathlib import Path

import yaml

from eventd.cli import build_parser
from eventd.ruleset.loader import load_rules

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def compose():
    return yaml.safe_load((DEPLOY / "docker-compose.postgres.yml").read_text())


def test_migrate_runs_before_eventd_with_the_password_from_a_secret():
    doc = compose()
    services = doc["services"]
    migrate, eventd = services["migrate"], services["eventd"]
    assert eventd["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    parsed = build_parser().parse_args(migrate["command"][1:])
    assert (parsed.db_command, parsed.password_file) == ("migrate", "/run/secrets/pg-password")
    assert parsed.dsn == eventd["environment"]["EVENTD_PG_DSN"]
    assert "pg-password" in eventd["secrets"] and "pg-password" in migrate["secrets"]
    assert (DEPLOY / doc["secrets"]["pg-password"]["file"]).read_text().strip() == \
        "demo-pg-password-not-secret"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == \
        "/run/secrets/pg-password"
    assert "password" not in eventd["environment"]["EVENTD_PG_DSN"].split("@")[0].split("//")[1]


def test_eventds_command_parses_and_its_rules_load_with_its_environment():
    eventd = compose()["services"]["eventd"]
    parsed = build_parser().parse_args(eventd["command"][1:])
    assert [str(p) for p in parsed.rules] == ["/etc/eventd/rules", "/etc/eventd/rules/postgres"]
    env = {name: str(value) for name, value in eventd["environment"].items()
           if not name.startswith("<")}
    env["EVENTD_PG_PASSWORD_FILE"] = ""  # the file exists only in the container
    ruleset = load_rules([ROOT / "rules", ROOT / "rules" / "postgres"], env)
    kinds = {spec.kind for rule in ruleset.rules for spec in rule.actions}
    assert {"postgres", "audit"} <= kinds
