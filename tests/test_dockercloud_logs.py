"""`enrich: logs` with the Docker Cloud source: the emulator's container logs endpoint.

The emulator serves a container's output as the Stream API's logs websocket (one JSON frame
per line, `tail`, `follow=false` closes); eventd reads the last lines with the stream's
credentials, redacts them, and the incident carries them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eventd.sources.dockercloud.logs import ContainerLogs
from tests.daemon_helpers import emulator_env, start_daemon, write_rules
from tests.incident_services import PagerDutyFake, running
from tests.waiting import wait_until

UUID = "c1dd4e1e-1356-411c-8613-e15146633640"
CONTAINER = f"/api/app/v1/container/{UUID}/"
KEY = "f00dfeedf00dfeedf00dfeedf00dfeed"


def reader(emulator) -> ContainerLogs:
    import base64

    header = "Basic " + base64.b64encode(b"user:apikey").decode()
    return ContainerLogs(emulator.stream_url, header)


def test_the_last_lines_with_tail_and_the_cap(emulator) -> None:
    emulator.add_container_logs(UUID, [f"line {i}" for i in range(1, 51)])
    logs = reader(emulator)
    assert logs.logs({"resource_uri": CONTAINER}, 20, 16384, 1.0) == \
        [f"line {i}" for i in range(31, 51)]
    capped = logs.logs({"resource_uri": CONTAINER}, 20, 100, 1.0)
    assert capped is not None and 0 < len(capped) < 20
    assert logs.logs({"resource_uri": "/api/app/v1/service/" + UUID + "/"}, 20, 100, 1.0) is None
    assert logs.logs({"resource_uri": "/api/app/v1/../container/x/"}, 20, 100, 1.0) is None


@pytest.fixture
def pagerduty():
    yield from running(PagerDutyFake((KEY,)))


def test_the_incident_carries_the_container_logs(emulator, pagerduty, tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", """
rules:
  - name: stopped
    match: {type: container, state: Stopped}
    enrich: [logs]
    actions:
      - pagerduty:
          url: "${PD_URL}"
          routing_key: "${PAGERDUTY_ROUTING_KEY}"
          summary: "stopped: {{ logs[-1] }}"
""")
    emulator.add_container_logs(UUID, ["starting", "db password=s3cret refused", "giving up"])
    env = emulator_env(emulator, PD_URL=pagerduty.url, PAGERDUTY_ROUTING_KEY=KEY)
    daemon = start_daemon(emulator, rules, tmp_path / "state", env=env)
    try:
        assert emulator.wait_for_connections(1, 10)
        emulator.emit_event(type="container", action="update", state="Stopped",
                            resource_uri=CONTAINER)
        wait_until(lambda: pagerduty.incidents, 10, message="the incident")
        payload = pagerduty.incidents[0].events[0]["payload"]
        assert payload["summary"] == "stopped: giving up"
        assert payload["custom_details"]["logs"] == \
            "starting\ndb password=*** refused\ngiving up"
    finally:
        daemon.stop()
