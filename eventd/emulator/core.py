"""The Emulator: a fake Docker Cloud (Stream + REST API) on 127.0.0.1 for tests and demos."""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from eventd.emulator.api import RestApi
from eventd.emulator.control import handle_control
from eventd.emulator.errors import ListenError
from eventd.emulator.faults import Faults
from eventd.emulator.fencing import Fences
from eventd.emulator.operations import Operator
from eventd.emulator.records import Handshake, RecordedCall, StreamConnection
from eventd.emulator.rest_server import Backend, RestServer
from eventd.emulator.scenario import Scenario, Step, load_scenario
from eventd.emulator.scheduler import Scheduler
from eventd.emulator.stream_server import StreamServer
from eventd.emulator.tls import Certificate, write_self_signed
from eventd.emulator.world import (
    DEFAULT_WORLD,
    EVENT_FIELDS,
    Container,
    Node,
    Service,
    World,
    build_world,
    exit_code_message,
    iso8601,
    utcnow,
)

logger = logging.getLogger(__name__)


#: a container's log lines the emulator keeps (the oldest go first)
MAX_LOG_LINES = 10_000


def _compact(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


class Emulator:
    """Both servers, the living world, faults and recordings; `with Emulator() as emu:`."""

    def __init__(self, user: str = "user", apikey: str = "apikey", token: str | None = None,
                 namespace: str = "user",
                 scenario: str | Path | Mapping[str, Any] | Scenario | None = None,
                 host: str = "127.0.0.1", rest_port: int = 0, stream_port: int = 0,
                 tick: float = 0.05, seed: int | None = None, tls: bool = False,
                 tls_dir: Path | None = None, tls_client_ca: Path | None = None,
                 namespaces: Sequence[str] = (),
                 keepalive: tuple[float, float] | None = None, fencing: bool = False) -> None:
        """`keepalive` (interval, timeout): ping stream clients and end those that do not
        answer (off by default, as documented). `fencing`: refuse stream handshakes and REST
        writes whose `Eventd-Fencing-Token` is stale, counted in `fences`."""
        self.user = user
        self.namespace = namespace
        #: further namespaces (organisations) served beside `namespace`, each its own stream;
        #: the world's objects live in `namespace`, the REST API answers in every one of them
        self.namespaces = tuple(dict.fromkeys([namespace, *namespaces]))
        self.host = host
        self.tick = tick
        self.auth_header = "Basic " + base64.b64encode(f"{user}:{apikey}".encode()).decode()
        self.token = token
        self._accepted = {self.auth_header} | ({token} if token else set())
        if scenario is None or isinstance(scenario, Scenario):
            self.scenario = scenario
        else:
            self.scenario = load_scenario(scenario)
        self._records = threading.Lock()
        self._sent: list[dict[str, Any]] = []
        self._calls: list[RecordedCall] = []
        self._handshakes: list[Handshake] = []
        self._connections: list[StreamConnection] = []
        self.faults = Faults()
        #: the fencing tokens seen, with fencing on (None: the header is ignored)
        self.fences: Fences | None = Fences() if fencing else None
        self.world = World(namespace, emit=self._emit_world_event,
                           rng=random.Random(seed) if seed is not None else None)
        build_world(self.world, self.scenario.world if self.scenario else DEFAULT_WORLD)
        self.scheduler = Scheduler(self.world.lock)
        self.operator = Operator(self.world, self.scheduler, tick,
                                 should_fail=self.faults.take_action_failure)
        self.api = RestApi(self.world, self.operator,
                           ignore_dates=lambda: self.faults.ignoring_dates,
                           namespaces=self.namespaces)
        self._rest_port = rest_port
        #: with tls: the self-signed certificate both servers present (clients' CA file)
        self.certificate: Certificate | None = write_self_signed(tls_dir, host) if tls else None
        self._tls = self.certificate.server_context(tls_client_ca) if self.certificate else None
        self._logs: dict[str, list[dict[str, Any]]] = {}
        self._logs_lock = threading.Lock()
        self._stream = StreamServer(host=host, port=stream_port, namespace=namespace,
                                    authorized=self.authorized, faults=self.faults,
                                    record=self._record_handshake, tls=self._tls,
                                    namespaces=self.namespaces,
                                    record_connection=self._record_connection,
                                    keepalive=keepalive, fences=self.fences,
                                    container_logs=self.container_logs)
        self._rest: RestServer | None = None
        self.faults.on_drop = self._stream.drop_all
        self.faults.on_silent = self._stream.set_silent

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Emulator:
        """Start both servers, the world clock and the scenario timeline."""
        backend = Backend(
            api=self.api.handle, authorized=self.authorized, record=self.record_call,
            control=lambda method, path, raw, query, content_type, client: handle_control(
                self, method, path, raw, query, content_type, client),
            faults=self.faults, fences=self.fences)
        try:
            self._rest = RestServer(backend, self.host, self._rest_port, tls=self._tls)
        except OSError as exc:
            raise ListenError("REST API", self.host, self._rest_port, exc) from None
        try:
            self._stream.start()
        except OSError as exc:
            self._rest.stop()
            self._rest = None
            raise ListenError("Stream API", self.host, self._stream.port, exc) from None
        self._rest.start()
        self.scheduler.start()
        for step in self.scenario.steps if self.scenario else ():
            self.scheduler.call_later(step.at, self._step_runner(step))
        return self

    def stop(self) -> None:
        """Stop the clock and both servers, joining every thread."""
        self.scheduler.stop()
        self._stream.stop()
        if self._rest is not None:
            self._rest.stop()
            self._rest = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop_stream(self) -> None:
        """Stop the stream server (dropping its connections); the REST API keeps running."""
        self._stream.stop()

    def start_stream(self) -> None:
        """Start the stream server again on the same port."""
        self._stream.start()

    def restart_stream(self) -> None:
        """A server restart mid-stream: drop everything, listen again on the same port."""
        self.stop_stream()
        self.start_stream()

    # -- addresses and credentials ------------------------------------------------------------
    @property
    def rest_port(self) -> int:
        """The REST port actually bound."""
        return self._rest.port if self._rest else self._rest_port

    @property
    def stream_port(self) -> int:
        """The stream port actually bound (kept across restarts)."""
        return self._stream.port

    @property
    def rest_url(self) -> str:
        """`http://127.0.0.1:PORT/` (`https://` with tls)."""
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.rest_port}/"

    @property
    def stream_url(self) -> str:
        """`ws://127.0.0.1:PORT/` (`wss://` with tls)."""
        return f"{'wss' if self._tls else 'ws'}://{self.host}:{self.stream_port}/"

    @property
    def ca_file(self) -> Path | None:
        """The certificate clients must trust (EVENTD_CA_FILE), with tls; else None."""
        return self.certificate.cert if self.certificate else None

    def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header value is one the emulator accepts."""
        return header is not None and header in self._accepted

    # -- events -------------------------------------------------------------------------------
    def emit(self, event: Mapping[str, Any] | str | bytes) -> None:
        """Broadcast one frame: a dict as JSON (filters apply), str/bytes as is (to everyone)."""
        if isinstance(event, (str, bytes)):
            logger.info("stream raw frame sent: %r", event[:80])
            self._stream.broadcast(event, None)
            return
        with self.world.lock:
            self._emit_world_event(dict(event))

    def add_container_logs(self, uuid: str, lines: list[str], stream: str = "stdout") -> None:
        """Give container `uuid` log output (what its process printed), oldest first."""
        with self._logs_lock:
            kept = self._logs.setdefault(uuid, [])
            kept.extend({"type": "log", "log": line + "\n", "streamType": stream,
                         "timestamp": int(time.time())} for line in lines)
            del kept[:-MAX_LOG_LINES]

    def container_logs(self, uuid: str) -> list[dict[str, Any]]:
        """Container `uuid`'s log messages as the logs endpoint sends them, oldest first."""
        with self._logs_lock:
            return list(self._logs.get(uuid, ()))

    def emit_event(self, type: str = "container", action: str = "update",  # noqa: A002
                   state: str = "Running", resource_uri: str | None = None,
                   parents: list[str] | None = None,
                   namespace: str | None = None) -> dict[str, Any]:
        """Build a documented event (new uuid, datetime now), broadcast it and return it.

        Without `resource_uri` the first object of that type is used; without `parents`
        the object's documented parents are used when it exists in the world. With another
        `namespace` the event is about a new object of that namespace (its stream only).
        """
        with self.world.lock:
            if resource_uri is None and namespace not in (None, self.namespace):
                subsystem = "infra" if type in ("node", "nodecluster") else "app"
                resource_uri = f"/api/{subsystem}/v1/{namespace}/{type}/{self.world.new_uuid()}/"
            if resource_uri is None:
                objects = self.world.objects(type) if type in ("stack", "service", "container",
                                                               "node", "nodecluster",
                                                               "action") else []
                resource_uri = (self.world.resource_uri(type, objects[0].uuid) if objects
                                else f"/api/app/v1/{self.namespace}/{type}/"
                                     f"{self.world.new_uuid()}/")
            if parents is None:
                parents = self._parents_of(resource_uri)
            event = {"type": type, "action": action, "parents": list(parents),
                     "resource_uri": resource_uri, "state": state,
                     "uuid": self.world.new_uuid(), "datetime": iso8601(utcnow())}
            self._emit_world_event(event)
        return event

    def complete_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Fill a partial event's missing `uuid` and `datetime` (control endpoint, scenarios)."""
        done = dict(event)
        if done.get("type") in (None, "error", "auth"):
            return done
        done.setdefault("uuid", self.world.new_uuid())
        done.setdefault("datetime", iso8601(utcnow()))
        ordered = {key: done[key] for key in EVENT_FIELDS if key in done}
        ordered.update({k: v for k, v in done.items() if k not in ordered})
        return ordered

    def _parents_of(self, resource_uri: str) -> list[str]:
        parts = [p for p in resource_uri.split("/") if p]
        if len(parts) >= 2 and parts[-2] in ("stack", "service", "container", "node",
                                             "nodecluster", "action"):
            try:
                obj = self.world.lookup(parts[-2], parts[-1])
            except Exception:  # noqa: BLE001 - an unknown object simply has no parents
                return []
            return self.world.parents(obj)
        return []

    def _emit_world_event(self, event: dict[str, Any]) -> None:
        with self._records:
            self._sent.append(event)
        logger.info("event %s %s %s %s", event.get("type"), event.get("action"),
                    event.get("state"), event.get("resource_uri"))
        self._stream.broadcast(_compact(event), event)

    def sent_events(self) -> list[dict[str, Any]]:
        """Every event dict broadcast so far, in order."""
        with self._records:
            return list(self._sent)

    # -- recordings ---------------------------------------------------------------------------
    def record_call(self, call: RecordedCall) -> None:
        """Keep one REST call (the REST server calls this)."""
        with self._records:
            self._calls.append(call)

    def rest_calls(self) -> list[RecordedCall]:
        """Every REST call except control calls, in order."""
        with self._records:
            return list(self._calls)

    def clear_rest_calls(self) -> None:
        """Forget the REST calls recorded so far."""
        with self._records:
            self._calls.clear()

    def _record_handshake(self, handshake: Handshake) -> None:
        with self._records:
            self._handshakes.append(handshake)

    def _record_connection(self, connection: StreamConnection) -> None:
        with self._records:
            self._connections.append(connection)

    def stream_connections(self) -> list[StreamConnection]:
        """Every stream connection accepted so far (open ones have `closed` None), in order."""
        with self._records:
            return list(self._connections)

    def namespace_counts(self) -> dict[str, int]:
        """Open stream connections now, per namespace."""
        return self._stream.namespace_counts()

    def handshakes(self) -> list[Handshake]:
        """Every stream handshake attempt with the status it got (101 when accepted)."""
        with self._records:
            return list(self._handshakes)

    def clear_handshakes(self) -> None:
        """Forget the handshakes recorded so far."""
        with self._records:
            self._handshakes.clear()
            self._connections = [c for c in self._connections if c.closed is None]

    @property
    def connection_count(self) -> int:
        """Open stream connections now."""
        return self._stream.connection_count

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until exactly `n` stream connections are open; False at the timeout."""
        return self._stream.wait_for_connections(n, timeout)

    # -- scenario -----------------------------------------------------------------------------
    def _step_runner(self, step: Step) -> Any:
        def run() -> float | None:
            logger.info("scenario step %s (line %d, at %.2fs): %s", step.name, step.line,
                        step.at, step.args)
            handler = getattr(self, f"_step_{step.name}")
            result: float | None = handler(**step.args)
            return result
        return run

    def _step_container_exit(self, service: str, index: int, exit_code: int) -> None:
        w = self.world
        svc: Service = w.find("service", service)
        live = w.containers_of(svc)
        if index >= len(live):
            logger.warning("scenario: service %s has no container #%d now", service, index)
            return
        container: Container = live[index]
        container.exit_code, container.exit_code_msg = exit_code, exit_code_message(exit_code)
        w.set_state(container, "Stopped")
        w.settle_service(svc)

    def _node(self, index: int) -> Node:
        node: Node = self.world.objects("node")[index]
        return node

    def _step_node_unreachable(self, index: int) -> None:
        self.world.set_state(self._node(index), "Unreachable")

    def _step_node_deployed(self, index: int) -> None:
        self.world.set_state(self._node(index), "Deployed")

    def _step_failed_action(self, service: str, action: str) -> None:
        self.operator.failed_action(self.world.find("service", service), action)

    def _step_burst(self, count: int, rate: float) -> float | None:
        w = self.world
        pool = [o for kind in ("container", "service") for o in w.objects(kind)
                if o.state != "Terminated"]
        remaining = [count]

        def one() -> float | None:
            if remaining[0] <= 0 or not pool:
                return None
            w.publish(pool[(count - remaining[0]) % len(pool)])
            remaining[0] -= 1
            return 1.0 / rate if remaining[0] > 0 else None

        if one() is not None:
            self.scheduler.call_later(1.0 / rate, one)
        return None

    def _step_drop_connections(self) -> None:
        self.faults.drop_connections()

    def _step_silent(self, on: bool) -> None:
        self.faults.set_silent(on)

    def _step_restart_stream(self) -> None:
        self.restart_stream()

    def _step_emit(self, events: list[Any]) -> None:
        for event in events:
            self.emit(self.complete_event(event) if isinstance(event, Mapping) else str(event))

    # -- summary ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Connections, faults and a world summary, for the control endpoint."""
        return {"rest_url": self.rest_url, "stream_url": self.stream_url,
                "namespace": self.namespace, "namespaces": list(self.namespaces),
                "connections": self.connection_count,
                "stream_running": self._stream.running, "faults": self.faults.snapshot(),
                "sent_events": len(self.sent_events()), "world": self.world.summary()}
