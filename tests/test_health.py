"""The operations endpoint, over real HTTP on 127.0.0.1:0."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from eventd import __version__
from eventd.errors import ConfigError
from eventd.ops import health
from eventd.ops.metrics import Metrics


class Readiness:
    """A ready() callable whose answer the test sets."""

    def __init__(self) -> None:
        self.checks = {"stream": "connected", "rules": "ok", "spool": "ok"}

    def __call__(self) -> tuple[bool, dict[str, str]]:
        ok = all(v in ("ok", "connected") for v in self.checks.values())
        return ok, dict(self.checks)


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def endpoint(metrics: Metrics, readiness: Readiness) -> Iterator[str]:
    server, thread = health.serve("127.0.0.1", 0, metrics.registry, readiness)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        assert health.shutdown(server, thread, timeout=5)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def test_healthz_says_ok(endpoint: str) -> None:
    response = requests.get(f"{endpoint}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}


def test_readyz_200_when_every_check_passes(endpoint: str) -> None:
    response = requests.get(f"{endpoint}/readyz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {
        "ready": True, "checks": {"stream": "connected", "rules": "ok", "spool": "ok"}}


def test_readyz_503_names_the_failed_check(endpoint: str, readiness: Readiness) -> None:
    readiness.checks["stream"] = "disconnected"
    response = requests.get(f"{endpoint}/readyz", timeout=5)
    assert response.status_code == 503
    assert response.json() == {
        "ready": False, "checks": {"stream": "disconnected", "rules": "ok", "spool": "ok"}}
    readiness.checks["stream"] = "connected"
    assert requests.get(f"{endpoint}/readyz", timeout=5).status_code == 200


def test_readyz_503_when_the_check_itself_raises(metrics: Metrics) -> None:
    def broken() -> tuple[bool, dict[str, str]]:
        raise RuntimeError("boom")

    server, thread = health.serve("127.0.0.1", 0, metrics.registry, broken)
    try:
        response = requests.get(f"http://127.0.0.1:{server.server_port}/readyz", timeout=5)
    finally:
        health.shutdown(server, thread, timeout=5)
    assert response.status_code == 503
    assert response.json() == {"ready": False, "checks": {"readiness": "error: RuntimeError"}}


def test_unknown_path_is_404_and_post_is_405(endpoint: str) -> None:
    assert requests.get(f"{endpoint}/", timeout=5).status_code == 404
    assert requests.get(f"{endpoint}/metricsx", timeout=5).status_code == 404
    assert requests.post(f"{endpoint}/healthz", timeout=5).status_code == 405


def test_metrics_exposes_every_pinned_metric(endpoint: str, metrics: Metrics) -> None:
    # Labelled counters have no sample until a child exists; create one of each.
    metrics.count_received("container")
    metrics.events_invalid.labels(reason="not_json").inc()
    metrics.events_duplicate.inc()
    metrics.stream_connected.set(1)
    metrics.stream_reconnects.labels(reason="dropped").inc()
    metrics.stream_last_event.set(1700000000)
    metrics.rule_matches.labels(rule="container-crash").inc()
    metrics.actions.labels(kind="webhook", outcome="success").inc()
    metrics.action_duration.labels(kind="webhook").observe(0.02)
    metrics.spool_pending.set(2)
    metrics.deadletter.inc()
    metrics.rules_loaded.set(3)
    metrics.rules_reload_success.set(1)

    response = requests.get(f"{endpoint}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    found = samples(response.text)

    def value(name: str, **labels: str) -> float:
        for sample_labels, sample_value in found.get(name, []):
            if sample_labels == labels:
                return sample_value
        raise AssertionError(f"{name}{labels} not in /metrics; have {sorted(found)}")

    assert value("eventd_events_received_total", type="container") == 1
    assert value("eventd_events_invalid_total", reason="not_json") == 1
    assert value("eventd_events_duplicate_total") == 1
    assert value("eventd_stream_connected") == 1
    assert value("eventd_stream_reconnects_total", reason="dropped") == 1
    assert value("eventd_stream_last_event_timestamp_seconds") == 1700000000
    assert value("eventd_rule_matches_total", rule="container-crash") == 1
    assert value("eventd_actions_total", kind="webhook", outcome="success") == 1
    assert value("eventd_action_duration_seconds_count", kind="webhook") == 1
    assert value("eventd_action_duration_seconds_bucket", kind="webhook", le="0.025") == 1
    assert value("eventd_spool_pending") == 2
    assert value("eventd_deadletter_total") == 1
    assert value("eventd_rules_loaded") == 3
    assert value("eventd_rules_reload_success") == 1
    assert value("eventd_build_info", version=__version__) == 1


def test_no_created_series_beside_counters_and_histograms(endpoint: str, metrics: Metrics) -> None:
    """Issue 21.5: every counter exported a `*_created` series, doubling the series count."""
    metrics.actions.labels(kind="webhook", outcome="success").inc()
    metrics.action_duration.labels(kind="webhook").observe(0.02)
    text = requests.get(f"{endpoint}/metrics", timeout=5).text
    assert "eventd_actions_total{" in text and "eventd_action_duration_seconds_count{" in text
    assert [line for line in text.splitlines() if "_created" in line] == []


def test_metrics_without_any_event_still_show_the_unlabelled_families(
        endpoint: str) -> None:
    """What a first scrape of an idle daemon shows: gauges and label-free counters at 0."""
    found = samples(requests.get(f"{endpoint}/metrics", timeout=5).text)
    for name in ("eventd_events_duplicate_total", "eventd_stream_connected",
                 "eventd_spool_pending", "eventd_deadletter_total", "eventd_rules_loaded",
                 "eventd_rules_reload_success", "eventd_build_info", "eventd_actions_total"):
        assert name in found, name


def test_probes_are_answered_while_a_scrape_is_slow(metrics: Metrics) -> None:
    """A thread per request: a readiness check that blocks does not block /healthz."""
    release = threading.Event()
    entered = threading.Event()

    def slow() -> tuple[bool, dict[str, str]]:
        entered.set()
        release.wait(5)
        return True, {}

    server, thread = health.serve("127.0.0.1", 0, metrics.registry, slow)
    base = f"http://127.0.0.1:{server.server_port}"
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(
        requests.get(f"{base}/readyz", timeout=10).status_code))
    t.start()
    try:
        assert entered.wait(5)
        assert requests.get(f"{base}/healthz", timeout=2).status_code == 200
    finally:
        release.set()
        t.join(10)
        health.shutdown(server, thread, timeout=5)
    assert result == [200]


def test_port_in_use_raises_and_shutdown_frees_the_port(metrics: Metrics) -> None:
    server, thread = health.serve("127.0.0.1", 0, metrics.registry, lambda: (True, {}))
    port = server.server_port
    with pytest.raises(ConfigError) as caught:
        health.serve("127.0.0.1", port, metrics.registry, lambda: (True, {}))
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: address in use"
    assert health.shutdown(server, thread, timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


# -- slow and hostile clients (the deploy files bind 0.0.0.0) ---------------------------------
def half_sent(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: never finished
    return sock


def closed_by_server(sock: socket.socket) -> bytes:
    """What the server sent before closing (waits for the close, at most the socket timeout)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_a_half_sent_request_is_answered_408_and_closed(metrics: Metrics) -> None:
    server, thread = health.serve("127.0.0.1", 0, metrics.registry, lambda: (True, {}),
                                  read_timeout=1.0)
    try:
        with half_sent(server.server_port) as sock:
            started = time.monotonic()
            answer = closed_by_server(sock)  # socket timeout 10 s: a hang fails here
            took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.0 408 ")
        assert took >= 0.5  # it waited for the client, then gave up
    finally:
        health.shutdown(server, thread, timeout=5)


def test_the_default_read_timeout_is_a_few_seconds() -> None:
    assert 1 <= health.READ_TIMEOUT <= 5


def test_slow_drip_headers_are_cut_at_the_deadline(metrics: Metrics) -> None:
    """One byte now and then keeps no connection open past the head's deadline."""
    server, thread = health.serve("127.0.0.1", 0, metrics.registry, lambda: (True, {}),
                                  read_timeout=1.0)
    try:
        with half_sent(server.server_port) as sock:
            sock.settimeout(0.3)
            answer = b""
            for _ in range(40):  # 12 s of dripping at most
                try:
                    sock.sendall(b"X")
                    chunk = sock.recv(4096)
                except (TimeoutError, socket.timeout):
                    continue
                except OSError:
                    break
                answer += chunk
                if not chunk:
                    break
        assert answer.startswith(b"HTTP/1.0 408 "), answer
    finally:
        health.shutdown(server, thread, timeout=5)


def test_an_oversized_request_head_is_refused_431(metrics: Metrics) -> None:
    server, thread = health.serve("127.0.0.1", 0, metrics.registry, lambda: (True, {}))
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n")
            answer = closed_by_server(sock)
        assert answer.startswith(b"HTTP/1.0 431 ")
        assert requests.get(f"http://127.0.0.1:{server.server_port}/healthz", timeout=5).ok
    finally:
        health.shutdown(server, thread, timeout=5)


def test_2000_half_sent_requests_cost_a_bounded_number_of_threads(metrics: Metrics) -> None:
    server, thread = health.serve("127.0.0.1", 0, metrics.registry, lambda: (True, {}),
                                  read_timeout=2.0)
    before = threading.active_count()
    peak = before
    socks: list[socket.socket] = []
    try:
        for _ in range(2000):
            socks.append(half_sent(server.server_port))
            peak = max(peak, threading.active_count())
        # Half-sent heads cost no thread (one reads them all); past MAX_PENDING the oldest
        # ones were told at once, and closed.
        busy = socks[0]
        busy.settimeout(5)
        assert closed_by_server(busy).startswith(b"HTTP/1.0 503 ")
        peak = max(peak, threading.active_count())
        assert peak - before <= 1
        # and a probe is answered meanwhile
        assert requests.get(f"http://127.0.0.1:{server.server_port}/healthz",
                            timeout=5).status_code == 200
    finally:
        for sock in socks:
            sock.close()
    try:
        # Once the held ones time out, the endpoint answers again.
        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{server.server_port}/healthz",
                                    timeout=2).status_code == 200
            except requests.RequestException:
                return False

        from tests.waiting import wait_until

        wait_until(healthy, 10, interval=0.1, message="healthz after the flood")
    finally:
        health.shutdown(server, thread, timeout=5)


def test_probes_are_answered_while_idle_connections_fill_the_cap(metrics: Metrics) -> None:
    """Issue 20 finding 5: 17 idle connections, renewed every 4 s, held /healthz at 503 for
    20 s. Connections count only once their head has arrived, so probes are never refused."""
    server, thread = health.serve("127.0.0.1", 0, metrics.registry, lambda: (True, {}))
    port = server.server_port
    idle: list[socket.socket] = []
    answers: list[int] = []
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            # renew the idle ones, as the attack did: 3 x MAX_CONNECTIONS open at every moment
            for sock in idle:
                sock.close()
            idle = [socket.create_connection(("127.0.0.1", port), timeout=5)
                    for _ in range(3 * health.MAX_CONNECTIONS)]
            for path in ("/healthz", "/readyz"):
                try:
                    answers.append(requests.get(f"http://127.0.0.1:{port}{path}",
                                                timeout=5).status_code)
                except requests.RequestException:
                    answers.append(0)
            time.sleep(0.2)  # the attacker's pace, not a wait for a condition
        assert answers and set(answers) == {200}, answers
    finally:
        for sock in idle:
            sock.close()
        health.shutdown(server, thread, timeout=5)


def test_probes_keep_their_own_slots_while_slow_requests_fill_the_others(
        metrics: Metrics) -> None:
    """Requests whose head arrived but whose body trickles (a console POST) hold a slot each
    until READ_TIMEOUT; the probes have slots of their own."""
    server, thread = health.serve("127.0.0.1", 0, metrics.registry, lambda: (True, {}))
    port = server.server_port
    slow: list[socket.socket] = []
    try:
        for _ in range(health.MAX_CONNECTIONS + 4):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /ui/api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            slow.append(sock)
        for _ in range(10):
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    finally:
        for sock in slow:
            sock.close()
        health.shutdown(server, thread, timeout=5)
