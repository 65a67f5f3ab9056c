"""The `docker` action: restart, start, stop, kill, pause or unpause a container on the Engine.

`{call: restart, target: "{{ event.id }}", timeout: 10, signal: SIGKILL}`. The target is
looked up first (a name or a short id becomes the full id, an unknown one is a dead letter),
and the call goes to that full id, never the name: the gate (eventd.delivery.gate) admits it
only for the event's own container or one the rule names literally, never eventd's own. The
guards see the object the Engine's events will name: at most a few calls per
container per window (the limiter, checked when the job runs, so spooled jobs respect it
too), and the loop guard told before the call, so the events a restart causes carry
`caused_by_eventd: true`. Durable like `dockercloud`: accepted jobs are spooled and retried
while the Engine is away (connection errors, 5xx); 4xx answers are final.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from eventd.actions.base import ActionContext
from eventd.errors import ActionSkipped, PermanentActionError, RetryableActionError
from eventd.events import DOCKER_URI_PREFIX as URI_PREFIX
from eventd.guards.calls import TargetLimiter
from eventd.guards.loop import LoopGuard
from eventd.outbound import Address, BadAddress, Call, Outbound
from eventd.records import ActionJob

if TYPE_CHECKING:  # the Docker SDK (and requests under it) loads on the first call, not at start
    import docker

logger = logging.getLogger(__name__)

CALLS = ("restart", "start", "stop", "kill", "pause", "unpause")
#: the options each call takes besides `call` and `target`
CALL_OPTIONS: dict[str, frozenset[str]] = {
    "restart": frozenset({"timeout"}), "stop": frozenset({"timeout"}),
    "kill": frozenset({"signal"}), "start": frozenset(), "pause": frozenset(),
    "unpause": frozenset(),
}
#: the queue (and circuit breaker) every docker call shares: one Engine
TARGET = "docker"
#: what a container name or id can be (the Engine's own rule for names; ids are hex)
_CONTAINER_REF = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")


def container_uri(container_id: str) -> str:
    """The resource_uri the Engine's events about this container carry."""
    return f"{URI_PREFIX}container/{container_id}/"


def _is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


class DockerAction:
    """One Engine call on one container."""

    name: ClassVar[str] = "docker"
    durable: ClassVar[bool] = True
    per_event: ClassVar[bool] = False
    #: it changes the objects events are about: not on eventd's own events, not on old events
    acts_on_objects: ClassVar[bool] = True
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["call", "target"],
        "properties": {
            "call": {"type": "string", "description": f"one of {', '.join(CALLS)}"},
            "target": {"type": "string", "minLength": 1,
                       "description": "the container's id or name, e.g. {{ event.id }}"},
            "timeout": {"type": ["number", "string"],
                        "description": "restart/stop: seconds before SIGKILL (Engine default 10)"},
            "signal": {"type": ["string", "integer"],
                       "description": "kill: the signal (default SIGKILL)"},
        },
    }

    def __init__(self, context: ActionContext) -> None:
        self.context = context
        self.loop_guard = context.loop_guard if context.loop_guard is not None else LoopGuard()
        self.limiter = context.limiter if context.limiter is not None else TargetLimiter()
        self._client: docker.APIClient | None = None
        self._lock = threading.RLock()  # _failed() may run inside _engine()

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """A known call, a target, and only the options that call takes."""
        problems: list[str] = []
        call = options.get("call")
        if not isinstance(call, str) or (not _is_template(call) and call not in CALLS):
            problems.append(f"call must be one of {', '.join(CALLS)}, got {call!r}")
        target = options.get("target")
        if not isinstance(target, str) or not target.strip():
            problems.append("target (the container's id or name, e.g. {{ event.id }}) is required")
        if isinstance(call, str) and call in CALL_OPTIONS:
            for extra in ("timeout", "signal"):
                if extra in options and extra not in CALL_OPTIONS[call]:
                    problems.append(f"{extra} does not apply to {call}")
        timeout = options.get("timeout")
        if timeout is not None and not _is_template(timeout):
            try:
                if isinstance(timeout, bool) or float(timeout) < 0:
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        return problems

    def target(self, options: dict[str, Any]) -> str:
        """All calls share one queue: one Engine."""
        return TARGET

    def describe(self, job: ActionJob) -> str:
        """The call and the container."""
        return f"docker {job.options.get('call')} {str(job.options.get('target'))[:80]}"

    def inactive(self, options: dict[str, Any]) -> bool:
        """A call is always made."""
        return False

    def flush(self) -> None:
        """Nothing buffered."""

    def prepare(self, job: ActionJob) -> Outbound:
        """Ask the Engine which container the target names (a read); the call goes to its full
        id, never to the name, so the gate judges the container that will be acted on."""
        options = job.options
        problems = self.validate(options)
        if problems or _is_template(options.get("call")):
            raise PermanentActionError(f"docker: {'; '.join(problems) or 'call not rendered'}")
        call, target = str(options["call"]), str(options["target"]).strip()
        if not _CONTAINER_REF.fullmatch(target):  # the inspect URL is built from it
            raise BadAddress("target is not a container name or id", reason="container")
        client = self._engine()
        try:
            container = client.inspect_container(target)
        except Exception as exc:  # noqa: BLE001 - sorted by _failed
            raise self._failed(exc, f"inspect {target[:80]}") from None
        full_id = str(container.get("Id") or "") if isinstance(container, dict) else ""
        name = str(container.get("Name") or "").lstrip("/") if isinstance(container, dict) else ""
        return Outbound(kind=self.name, policy="docker",
                        calls=(Call(call, Address("docker", path=full_id)),),
                        subject=container_uri(full_id),
                        facts={"name": name or full_id[:12], "requested": target})

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """Pass the guards and make the call on the resolved full id (once per attempt)."""
        call = outbound.calls[0]
        full_id, name = call.address.path, str(outbound.facts.get("name", ""))
        uri = outbound.subject
        if not self.limiter.acquire(uri, job.id):
            raise ActionSkipped(f"rate limit reached for container {name}", reason="rate_limited")
        self.loop_guard.record(uri)
        client = self._engine()
        try:
            self._call(client, call.method, full_id, job.options)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc, f"{call.method} {name}") from None
        return f"{call.method} {name} ({full_id[:12]})"

    def _call(self, client: docker.APIClient, call: str, container: str,
              options: dict[str, Any]) -> None:
        if call in ("restart", "stop"):
            timeout = options.get("timeout")
            method = client.restart if call == "restart" else client.stop
            if timeout is None:
                method(container)
            else:
                method(container, timeout=int(float(timeout)))
        elif call == "kill":
            signal = options.get("signal")
            client.kill(container, signal=signal) if signal is not None else client.kill(container)
        else:
            getattr(client, call)(container)

    def _engine(self) -> docker.APIClient:
        """The shared client, made on first use (the Engine may come after eventd)."""
        with self._lock:
            if self._client is None:
                try:
                    from eventd.clients.docker import make_client

                    self._client = make_client(self.context.settings)
                except Exception as exc:  # noqa: BLE001
                    raise self._failed(exc, "connect") from None
            return self._client

    def _failed(self, exc: BaseException, what: str) -> Exception:
        """4xx: final (dead letter). The Engine away or failing (5xx): retried."""
        import docker.errors

        from eventd.clients.docker import describe_failure

        if isinstance(exc, docker.errors.APIError) and exc.response is not None:
            status = exc.response.status_code
            text = str(exc.explanation or "")[:160]
            if 400 <= status < 500:
                return PermanentActionError(f"docker {what}: HTTP {status}: {text}",
                                            status_code=status)
            return RetryableActionError(f"docker {what}: HTTP {status}: {text}", status_code=status)
        failure = describe_failure(exc)
        with self._lock:  # the next attempt negotiates again
            client, self._client = self._client, None
        if client is not None:
            client.close()
        return RetryableActionError(f"docker {what}: {failure.detail}")

    def close(self) -> None:
        """Close the Engine client."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
