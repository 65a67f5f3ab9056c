"""The `dockercloud` action: a REST call on a Docker Cloud object (redeploy, scale, ...).

Calls go through the shared RestClient (same credentials as the stream). `prepare` builds
the final calls; the gate (eventd.delivery.gate) admits only paths of the reference's grammar,
of a type the call applies to, in a namespace eventd serves: event data cannot steer a call
elsewhere (`..`, `?`, `#`, another path, another namespace). Each target object gets at
most a few calls per window (the limiter), checked when the job runs so spooled jobs respect
it too; the loop guard is told before each call so the events the call causes are recognised
as eventd's own. With `wait: true` the attempt returns a FollowUp holding the action URI: the
dispatcher saves it with the job and follows the action beside the REST queue, and a restart
follows the same action instead of calling again.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, ClassVar

from eventd.actions.base import (
    ActionContext,
    ActionFollower,
    FollowInterrupted,
    FollowUp,
)
from eventd.clients.dockercloud.namespaces import in_namespace
from eventd.clients.dockercloud.rest import TERMINAL_STATES
from eventd.errors import ActionError, ActionSkipped, PermanentActionError
from eventd.events import object_ref
from eventd.guards.calls import TargetLimiter
from eventd.guards.loop import LoopGuard
from eventd.outbound import Outbound
from eventd.records import ActionJob

logger = logging.getLogger(__name__)

#: The calls and the object types each applies to (reference 3.3).
CALL_TYPES: dict[str, frozenset[str]] = {
    "redeploy": frozenset({"service", "container", "stack"}),
    "start": frozenset({"service", "container", "stack"}),
    "stop": frozenset({"service", "container", "stack"}),
    "terminate": frozenset({"service", "container", "stack", "node", "nodecluster"}),
    "scale": frozenset({"service"}),
    "health-check": frozenset({"node"}),
    "docker-upgrade": frozenset({"node", "nodecluster"}),
}
CALLS = tuple(CALL_TYPES)
METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")
ACTION_HEADER = "X-DockerCloud-Action-URI"
DEFAULT_WAIT_TIMEOUT = 300.0
POLL_INTERVAL = 1.0

_ACTION_URI = re.compile(r"/api/audit/v1/action/[0-9a-fA-F-]{36}/")


def normalise(uri: str) -> str:
    """A resource URI with a leading and exactly one trailing slash (namespace kept as given)."""
    uri = uri.strip()
    if not uri.startswith("/"):
        uri = "/" + uri
    return uri.rstrip("/") + "/"


class DockerCloudAction:
    """Redeploy, start, stop, terminate, scale, health-check or docker-upgrade an object."""

    name: ClassVar[str] = "dockercloud"
    durable: ClassVar[bool] = True
    per_event: ClassVar[bool] = False
    acts_on_objects: ClassVar[bool] = True
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "call": {"type": "string"},
            "target": {"type": "string", "minLength": 1},
            "reuse_volumes": {"type": ["boolean", "string"]},
            "containers": {"type": ["integer", "string"]},
            "wait": {"type": ["boolean", "string"]},
            "wait_timeout": {"type": "number", "exclusiveMinimum": 0},
            "method": {"type": "string"},
            "path": {"type": "string", "minLength": 1},
            "json": {},
        },
    }

    def __init__(self, context: ActionContext) -> None:
        self.context = context
        self.loop_guard = context.loop_guard if context.loop_guard is not None else LoopGuard()
        self.limiter = context.limiter if context.limiter is not None else TargetLimiter()
        self.poll_interval = context.poll_interval

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """A known call with a target (scale needs containers), or a raw method + path."""
        call = options.get("call")
        if call is None:
            method, path = options.get("method"), options.get("path")
            if not method or not path:
                return [f"give call (one of {', '.join(CALLS)}) and target, or method and path"]
            if isinstance(method, str) and "{" not in method and method.upper() not in METHODS:
                return [f"method must be one of {', '.join(METHODS)}"]
            return []
        problems = []
        if not isinstance(call, str) or ("{" not in call and call not in CALLS):
            problems.append(f"call must be one of {', '.join(CALLS)}, got {call!r}")
        if not options.get("target"):
            problems.append("target (a resource URI) is required")
        if call == "scale":
            containers = options.get("containers")
            if containers is None:
                problems.append("scale needs containers (the number of containers)")
            elif isinstance(containers, bool) or (isinstance(containers, int) and containers < 0):
                problems.append("containers must be an integer >= 0")
        if options.get("method") or options.get("path"):
            problems.append("give either call or method and path, not both")
        return problems

    def target(self, options: dict[str, Any]) -> str:
        """All REST actions share one queue (one Docker Cloud account)."""
        return "dockercloud"

    def describe(self, job: ActionJob) -> str:
        """The object acted on."""
        options = job.options
        return str(options.get("target") or options.get("path") or "dockercloud")[:200]

    def inactive(self, options: dict[str, Any]) -> bool:
        """A call is always made."""
        return False

    def flush(self) -> None:
        """Nothing buffered."""

    def prepare(self, job: ActionJob) -> Outbound:
        """The REST calls of the job (scale: PATCH then POST), each URL parsed once.

        A target without a namespace is called in the namespace of the stream its event came
        from (eventd tags events of DOCKERCLOUD_NAMESPACE's streams); an event's own
        `namespace` key is data and never a path part.
        """
        rest = self.context.rest
        if rest is None:
            raise PermanentActionError("dockercloud: no REST client (credentials) configured")
        options = job.options
        problems = self.validate(options)
        call = options.get("call")
        if not problems and call is not None and call not in CALL_TYPES:
            problems = [f"call must be one of {', '.join(CALLS)}, got {str(call)[:40]!r}"]
        if problems:
            raise PermanentActionError(f"dockercloud: {'; '.join(problems)}")
        base = in_namespace(normalise(str(options.get("target") or options.get("path"))),
                            self._stream_namespace(job))
        calls = [rest.call(method, path, params=params, json=body)
                 for method, path, params, body in self._requests(call, base, options)]
        what = str(call or str(options.get("method")).upper())
        return Outbound(kind=self.name, policy="dockercloud", calls=tuple(calls), subject=base,
                        facts={"what": what})

    def _stream_namespace(self, job: ActionJob) -> str | None:
        namespace = job.event.get("namespace")
        configured = self.context.settings.namespaces
        return namespace if isinstance(namespace, str) and namespace in configured else None

    def send(self, job: ActionJob, outbound: Outbound) -> str | FollowUp:
        """Make the calls (once per attempt); with `wait`, hand back a FollowUp of the action."""
        rest = self.context.rest
        if rest is None:
            raise PermanentActionError("dockercloud: no REST client (credentials) configured")
        options = job.options
        target, what = outbound.subject, str(outbound.facts.get("what", ""))
        timeout = float(options.get("wait_timeout") or DEFAULT_WAIT_TIMEOUT)
        resumed = job.context.get("action_uri")
        if isinstance(resumed, str) and _ACTION_URI.fullmatch(resumed):
            # A restart during a wait: follow the action already started, never call again.
            return self._follow_up(what, target, resumed, timeout, resumed=True)
        if not self.limiter.acquire(target, job.id):
            raise ActionSkipped(f"rate limit reached for {target}", reason="rate_limited")
        self.loop_guard.record(target)
        response = None
        for call in outbound.calls:
            response = rest.send_call(call)
        assert response is not None
        action_uri = response.headers.get(ACTION_HEADER)
        if not action_uri:
            return f"{what} {target}: HTTP {response.status_code}"
        if not _truthy(options.get("wait", False)):
            return f"{what} {target}: HTTP {response.status_code}, action {action_uri}"
        return self._follow_up(what, target, action_uri, timeout)

    def _follow_up(self, what: str, target: str, action_uri: str, timeout: float,
                   resumed: bool = False) -> FollowUp:
        def follow(stopping: threading.Event) -> str:
            state = self._follow(action_uri, timeout, stopping)
            if state in ("Failed", "Canceled"):
                raise PermanentActionError(f"{what} {target}: action {action_uri} ended {state}")
            return f"{what} {target}: action {action_uri} {state}"

        note = " (resumed after a restart)" if resumed else ""
        return FollowUp(description=f"{what} {target}: following action {action_uri}{note}",
                        progress={"action_uri": action_uri}, follow=follow)

    @staticmethod
    def _requests(call: object, target: str, options: dict[str, Any],
                  ) -> list[tuple[str, str, dict[str, str] | None, Any]]:
        """(method, path, query, JSON body) of each request a call makes (reference 3.3)."""
        if call is None:
            return [(str(options["method"]).upper(), target, None, options.get("json"))]
        if call == "redeploy":
            params = {"reuse_volumes": "false"} \
                if "reuse_volumes" in options and not _truthy(options["reuse_volumes"]) else None
            return [("POST", f"{target}redeploy/", params, None)]
        if call == "terminate":
            return [("DELETE", target, None, None)]
        if call == "scale":
            try:
                count = int(options["containers"])
            except (TypeError, ValueError):
                raise PermanentActionError(
                    f"scale {target}: containers must be an integer") from None
            return [("PATCH", target, None, {"target_num_containers": count}),
                    ("POST", f"{target}scale/", None, None)]
        return [("POST", f"{target}{call}/", None, None)]

    def _follow(self, action_uri: str, timeout: float, stopping: threading.Event) -> str:
        """The action's terminal state; PermanentActionError if it does not end in time.

        Never retryable: retrying the job would repeat the call that already started.
        """
        ref = object_ref(action_uri)
        if ref is None:
            raise PermanentActionError(f"unusable action URI {action_uri!r}")
        path = f"/api/audit/v1/action/{ref.uuid}/"
        waiter: ActionFollower | None = self.context.action_waiter
        deadline = time.monotonic() + timeout
        # With a waiter, poll only as a safety net (the stream may miss the event).
        interval = self.poll_interval * (5 if waiter is not None else 1)
        while True:
            if waiter is not None:
                state = waiter.wait(action_uri, min(interval, max(0.0, deadline - time.monotonic())),
                                    stopping)
                if state is not None:
                    return state
            state = self._poll(path)
            if state in TERMINAL_STATES:
                return str(state)
            left = deadline - time.monotonic()
            if stopping.is_set():
                raise FollowInterrupted(f"shutdown while following {action_uri}")
            if left <= 0:
                raise PermanentActionError(
                    f"action {action_uri} still {state or 'unknown'} after {timeout:.0f} s")
            if waiter is None:
                stopping.wait(min(interval, left))

    def _poll(self, path: str) -> str | None:
        rest = self.context.rest
        assert rest is not None
        try:
            body = rest.get(path)
        except (ActionError, ValueError) as exc:
            logger.debug("polling %s failed: %s", path, exc)
            return None
        state = body.get("state") if isinstance(body, dict) else None
        return state if isinstance(state, str) else None

    def close(self) -> None:
        """Nothing to release: the RestClient belongs to the daemon."""


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
