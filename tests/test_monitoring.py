"""deploy/monitoring/: the alert rules, their promtool unit tests and the Grafana dashboard.

promtool checks and unit-tests the rules; a real Prometheus scrapes a real `eventd run`
(against the emulator) and answers every dashboard query and every alert expression, and
evaluates the rules itself, sending what fires to a real Alertmanager. Metric names are
checked against the README's metrics table and against what eventd actually exports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_helpers import emulator_env, write_rules
from tests.external import free_port, promtool, query
from tests.receiver import WebhookReceiver
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "eventd-alerts.yml"
ALERT_TESTS = MONITORING / "eventd-alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
README = ROOT / "README.md"

ROWS = ["Stream", "Rules", "Actions", "Delivery", "Process"]
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
#: Series that Prometheus makes for every target, not eventd.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
#: eventd series with no sample until something goes wrong (a healthy run has none), or that
#: another source than this test's exports.
ONLY_AFTER_TROUBLE = {
    "eventd_internal_errors_total": "created by the first unexpected error",
    "eventd_dropped_total": "created by the first work lost on purpose (e.g. at shutdown)",
    "eventd_store_errors_total": "created by the first failed store operation (Redis unreachable)",
    "eventd_gate_refused_total": "created by the first request the gate refused",
    "eventd_worker_restarts_total": "created by the first worker that died and was restarted",
    "eventd_cluster_heartbeats_ignored_total": "created by the first heartbeat ignored "
                                               "(a cluster's, on Redis)",
    # not trouble, another source: this run reads Docker Cloud's stream, not an Engine
    "eventd_docker_log_followers": "exported with the docker source only",
    "eventd_docker_log_follow_bytes": "exported with the docker source only",
    "eventd_docker_log_follows_total": "exported with the docker source only",
}
#: Grafana's variables, as a dashboard showing "All" over the last 5 minutes would fill them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$job": ".*", "$instance": ".*"}
METRIC = re.compile(r"\b(eventd_[a-z0-9_]+|up|scrape_[a-z_]+)\b(?!\s*\()")


# -- readers -------------------------------------------------------------------------------
def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every target, Grafana's variables filled in."""
    return [(panel["title"], grafana_expr(target["expr"]))
            for panel in dashboard_panels() for target in panel["targets"]]


def grafana_expr(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression (not functions, keywords or label names)."""
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_groupings = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "",
                               without_labels)
    return set(METRIC.findall(without_groupings))


def family(name: str) -> str:
    """The README's name for a series: a histogram's _bucket/_count/_sum belong to it."""
    return re.sub(r"_(bucket|count|sum)$", "", name) if "_duration_seconds_" in name else name


def readme_metrics() -> set[str]:
    return set(re.findall(r"^\| `(eventd_[a-z0-9_]+)` \|", README.read_text(), re.MULTILINE))


def readme_anchors() -> set[str]:
    """GitHub's anchors for the README's headings."""
    headings = re.findall(r"^#{1,6} (.+)$", README.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


# -- promtool ------------------------------------------------------------------------------
def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=MONITORING)


def test_promtool_check_rules_passes():
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = run_promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_show_every_alert_firing_and_not_firing():
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert firing == names
    assert silent == names


# -- the rules' content ----------------------------------------------------------------------
def test_every_alert_has_severity_summary_description_and_a_runbook_in_the_readme():
    anchors = readme_anchors()
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "README.md" and anchor in anchors, (rule["alert"], annotations["runbook"])


def test_alerts_and_dashboard_use_only_metrics_from_the_readme():
    documented = readme_metrics()
    assert len(documented) >= 20, "the README's metrics table was not found"
    used = set().union(*(metric_names(rule["expr"]) for rule in alert_rules()),
                       *(metric_names(expr) for _, expr in dashboard_queries()))
    assert {family(name) for name in used} - SCRAPE_SERIES <= documented
    # And the dashboard shows every documented metric.
    shown = {family(name) for _, expr in dashboard_queries() for name in metric_names(expr)}
    assert documented - shown == set()


# -- the dashboard ---------------------------------------------------------------------------
def test_dashboard_has_one_row_per_area_and_every_panel_a_datasource_and_targets():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert [item["name"] for item in board["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {item["name"]: item for item in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == DATASOURCE

    panels = board["panels"]
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert rows == ROWS
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    under: dict[str, int] = {}
    current = None
    for panel in panels:  # panels follow their row, in order of position
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            current = panel["title"]
            assert panel["collapsed"] is False and panel["panels"] == []
            continue
        assert current is not None, f"{panel['title']} is above the first row"
        under[current] = under.get(current, 0) + 1
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip() and target["refId"], panel["title"]
        assert panel.get("description"), panel["title"]
    assert set(under) == set(ROWS)
    ys = [panel["gridPos"]["y"] for panel in panels]
    assert ys == sorted(ys)


# -- a real Prometheus scraping a real eventd --------------------------------------------------
RULES = """
rules:
  - name: container-hook
    match: {{type: container}}
    actions:
      - webhook: {{url: "{hook}/hook", json: {{uuid: "{{{{ event.uuid }}}}"}}}}
  - name: service-refused
    match: {{type: service}}
    actions:
      - webhook: {{url: "{refused}/refused", json: {{uuid: "{{{{ event.uuid }}}}"}}}}
  - name: node-template-error
    match: {{type: node}}
    actions:
      - log: {{message: "{{{{ event.no_such_field }}}}"}}
"""


@dataclass
class Eventd:
    process: subprocess.Popen[str]
    port: int
    rules: Path

    def metrics(self) -> dict[str, float]:
        """Every sample of eventd's /metrics, summed over labels, by series name."""
        text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        totals: dict[str, float] = {}
        for metric_family in text_string_to_metric_families(text):
            for sample in metric_family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals


@pytest.fixture
def refusing_receiver() -> Iterator[WebhookReceiver]:
    """An endpoint that answers 404 to everything: its actions go straight to dead letters."""
    receiver = WebhookReceiver().start()
    receiver.respond_with(404, count=10_000)
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def eventd(emulator, webhook_receiver, refusing_receiver, tmp_path) -> Iterator[Eventd]:
    """`eventd run` as a subprocess against the emulator, serving /metrics on a free port."""
    rules = write_rules(tmp_path / "rules", RULES.format(hook=webhook_receiver.url,
                                                         refused=refusing_receiver.url))
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", **emulator_env(emulator)}
    log = tmp_path / "eventd.log"  # a file, not a pipe: a full pipe would stall eventd
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "eventd", "run", "--rules", str(rules), "--state-dir",
             str(tmp_path / "state"), "--metrics-addr", f"127.0.0.1:{port}"],
            env=env, stdout=output, stderr=output, text=True)
    try:
        def ready() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, 15, interval=0.05, message="eventd ready")
        yield Eventd(process, port, rules)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def gone_port() -> int:
    """Where an eventd used to listen: its scrapes fail (up == 0)."""
    return free_port()


# The `prometheus` fixture of tests/external.py, pointed at these.
@pytest.fixture
def prometheus_targets(eventd, gone_port) -> dict[str, list[str]]:
    return {"eventd": [f"127.0.0.1:{eventd.port}"], "eventd-gone": [f"127.0.0.1:{gone_port}"]}


@pytest.fixture
def prometheus_rule_files() -> list[Path]:
    return [ALERTS]


@pytest.fixture
def prometheus_alertmanager_url(alertmanager) -> str:
    return alertmanager


def has_data(prometheus: str, expr: str) -> bool:
    answer = query(prometheus, expr)
    return answer["status"] == "success" and bool(answer["data"]["result"])


def active_alerts(prometheus: str) -> set[tuple[str, str, str]]:
    """(alertname, job, state) of every pending or firing alert."""
    alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {(a["labels"]["alertname"], a["labels"].get("job", ""), a["state"]) for a in alerts}


def test_real_prometheus_answers_every_dashboard_query_and_alert_expression(
        emulator, eventd, prometheus, webhook_receiver):
    # Every expression parses, whatever the data.
    expressions = dashboard_queries() + [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    for title, expr in expressions:
        answer = query(prometheus, expr)
        assert answer["status"] == "success", (title, expr, answer.get("error"))

    # Prometheus has seen eventd connected, before anything happens.
    wait_until(lambda: has_data(prometheus, 'eventd_stream_connected{job="eventd"} == 1'), 15,
               interval=0.2, message="eventd scraped while connected")

    # Give every panel something to show: a delivered webhook, a refused one (dead letter and
    # action error), a template error, a frame that is not JSON, and a failed rule reload.
    emulator.emit_event(type="container", state="Running")
    emulator.emit_event(type="service", state="Running")
    emulator.emit_event(type="node", state="Deployed")
    emulator.emit("this is not json")
    wait_until(lambda: all(eventd.metrics().get(name, 0) >= 1 for name in (
        "eventd_deadletter_total", "eventd_template_errors_total", "eventd_action_errors_total")),
        15, interval=0.1, message="a dead letter, an action error and a template error")
    assert any(r.path == "/hook" for r in webhook_receiver.requests)
    eventd.rules.write_text(eventd.rules.read_text() + "  - name: broken\n    actions: [{nope: {}}]\n")
    eventd.process.send_signal(signal.SIGHUP)
    wait_until(lambda: eventd.metrics().get("eventd_rules_reload_success") == 0, 10, interval=0.1,
               message="the reload of a broken rule set failed")

    # Every metric the dashboard and the alerts use is one eventd exports (the ones that
    # only appear after trouble excepted).
    exported = set(eventd.metrics())
    used = set().union(*(metric_names(expr) for _, expr in expressions)) - SCRAPE_SERIES
    assert used - exported == set(ONLY_AFTER_TROUBLE)

    # Once scraped, every query has data, except those about trouble that did not happen.
    should_have_data = [(title, expr) for title, expr in dashboard_queries()
                        if not metric_names(expr) & set(ONLY_AFTER_TROUBLE)]
    assert len(should_have_data) >= 25
    missing: list[tuple[str, str]] = []

    def all_have_data() -> bool:
        missing[:] = [(title, expr) for title, expr in should_have_data
                      if not has_data(prometheus, expr)]
        return not missing

    try:
        wait_until(all_have_data, 20, interval=0.5, message="every dashboard query has data")
    except AssertionError:
        raise AssertionError(f"no data for: {missing}") from None

    # The dashboard's variables find eventd.
    for label, match in (("job", "eventd_build_info"), ("instance", 'eventd_build_info{job=~".*"}')):
        answer = requests.get(f"{prometheus}/api/v1/label/{label}/values", params={"match[]": match},
                              timeout=5).json()
        assert answer["status"] == "success" and answer["data"], (label, answer)

    # The alert expressions select what this run provoked, and nothing else: a target that is
    # gone, a dead letter, a failed reload; not a disconnection, a silence, a growing spool or
    # an internal error.
    with_data = {rule["alert"] for rule in alert_rules() if has_data(prometheus, rule["expr"])}
    assert with_data == {"EventdDown", "EventdDeadLetters", "EventdRulesReloadFailed"}

    # Prometheus evaluates the rule file itself without an error, and its alert states agree.
    rules = requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert [(r["name"], r["health"], r.get("lastError", "")) for g in rules for r in g["rules"]
            if r["health"] != "ok"] == []
    expected = {("EventdDown", "eventd-gone", "pending"),           # for: 2m
                ("EventdDeadLetters", "eventd", "firing"),         # no for
                ("EventdRulesReloadFailed", "eventd", "pending")}  # for: 1m
    wait_until(lambda: active_alerts(prometheus) == expected, 15, interval=0.5,
               message=f"alert states {expected}")

    # What fires reaches Alertmanager, and Alertmanager's webhook.
    def notified() -> list[dict[str, Any]]:
        return [alert for request in webhook_receiver.requests if request.path == "/alertmanager"
                for alert in request.json()["alerts"]]

    alerts = wait_until(notified, 15, interval=0.2, message="Alertmanager's notification")
    assert [(a["status"], a["labels"]["alertname"], a["labels"]["job"], a["labels"]["severity"],
             a["annotations"]["runbook"]) for a in alerts] == \
        [("firing", "EventdDeadLetters", "eventd", "warning", "README.md#troubleshooting")]
