"""Redis goes away under a running `eventd run --store redis://...` and comes back.

A redis-server this test starts on a port of its own (password-protected) is paused with
SIGSTOP for 10 s while events keep arriving from the emulator: nothing accepted is lost,
/readyz answers 503 with `"store": "unreachable"` and 200 again, the metrics say so, and
the password appears in no output.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import requests

from tests.daemon_helpers import emulator_env, eventd_process, free_port, write_rules
from tests.redis_server import RedisServer
from tests.test_cli import metric
from tests.waiting import wait_until

SECRET = "outage-pw-7f3a"
OUTAGE = 10.0


def readiness(port: int) -> tuple[int, dict[str, Any]]:
    """/readyz's status and body (0 when it does not answer); the store check takes up to
    one Redis socket timeout while Redis is silent."""
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    except requests.RequestException:
        return 0, {}
    return answer.status_code, answer.json()


def test_redis_paused_for_10s_loses_nothing_and_readiness_goes_503_and_back(
        emulator, webhook_receiver, tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", f"""
rules:
  - name: hook
    match: {{type: service}}
    actions:
      - webhook: {{url: "{webhook_receiver.url}/k", json: {{uuid: "{{{{ event.uuid }}}}"}}}}
""")
    port = free_port()

    def emit(count: int) -> list[str]:
        return [emulator.emit_event(type="service", state="Running",
                                    resource_uri="/api/app/v1/user/service/s1/",
                                    parents=[])["uuid"] for _ in range(count)]

    def delivered() -> list[str]:
        return list(dict.fromkeys(r.json()["uuid"] for r in webhook_receiver.requests))

    with RedisServer(tmp_path / "redis", password=SECRET) as server:
        eventd = eventd_process(
            "run", "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
            "--store", f"redis://127.0.0.1:{server.port}/0", "--cluster", "outage",
            "--metrics-addr", f"127.0.0.1:{port}",
            env=emulator_env(emulator, EVENTD_STORE_PASSWORD=SECRET))
        try:
            wait_until(lambda: readiness(port)[0] == 200, 30, 0.1, "eventd ready")
            sent = emit(5)
            wait_until(lambda: len(delivered()) == 5, 15, 0.05, "the first 5 delivered")

            server.pause()
            paused = time.monotonic()
            try:
                sent += emit(10)  # read from the stream while Redis answers nothing
                status, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(
                    readiness(port)), 8, 0.2, "/readyz 503")
                assert body["checks"]["store"] == "unreachable"
                wait_until(lambda: metric(port, "eventd_store_up") == 0, 8, 0.2)
                assert len(delivered()) == 5  # nothing acted on without being stored
                wait_until(lambda: time.monotonic() - paused >= OUTAGE, OUTAGE + 5, 0.2)
            finally:
                server.resume()

            wait_until(lambda: readiness(port)[0] == 200, 30, 0.2, "/readyz 200 again")
            assert readiness(port)[1]["checks"]["store"] == "ok"
            sent += emit(5)
            wait_until(lambda: len(delivered()) == 20, 30, 0.1,
                       "every accepted action delivered after the outage")
            wait_until(lambda: metric(port, "eventd_spool_pending") == 0, 15, 0.1)
            assert metric(port, "eventd_store_up") == 1
            assert (metric(port, "eventd_store_errors_total") or 0) >= 1
            eventd.send_signal(signal.SIGTERM)
            out, err = eventd.communicate(timeout=20)
        finally:
            eventd.kill()
        assert eventd.returncode == 0, err
        assert delivered() == sent  # all of them, once each, in the order they happened
        assert len({r.header("Idempotency-Key") for r in webhook_receiver.requests}) == 20
        assert "unreachable" in err and "reachable again" in err
        assert SECRET not in out + err and "Traceback" not in err
        client = server.client()
        try:
            assert client.hlen("outage:spool") == 0
        finally:
            client.close()
