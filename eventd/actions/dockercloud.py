"""The `dockercloud` action: a REST call on a Docker Cloud object (redeploy, scale, ...).

Calls go through the shared RestClient (same credentials as the stream). Each target object
gets at most a few calls per window (TargetLimiter), checked when the job runs so spooled
jobs respect it too; the loop guard is told before each call so the events the call causes
are recognised as eventd's own. With `wait: true` the action is followed to its end through
the stream's action events (ActionWaiter) or, failing that, by polling the action.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import requests

from eventd.actions.base import ActionContext, ActionJob
from eventd.delivery.guards import ActionSkipped, LoopGuard, TargetLimiter
from eventd.errors import ActionError, PermanentActionError
from eventd.events import object_ref
from eventd.sources.dockercloud.action_waiter import TERMINAL_STATES, ActionWaiter
from eventd.sources.dockercloud.rest import RestClient

logger = logging.getLogger(__name__)

CALLS = ("redeploy", "start", "stop", "terminate", "scale", "health-check", "docker-upgrade")
METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")
ACTION_HEADER = "X-DockerCloud-Action-URI"
DEFAULT_WAIT_TIMEOUT = 300.0
POLL_INTERVAL = 1.0


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
        extras = context.extras
        self.loop_guard: LoopGuard = extras.setdefault("loop_guard", LoopGuard())
        self.limiter: TargetLimiter = extras.setdefault("target_limiter", TargetLimiter())
        self.poll_interval = float(extras.get("action_poll_interval", POLL_INTERVAL))

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
        return str(options.get("target") or options.get("path") or "dockercloud")

    def run(self, job: ActionJob) -> str:
        """Make the call (once per attempt); follow the action if `wait` is set."""
        rest = self.context.rest
        if rest is None:
            raise PermanentActionError("dockercloud: no REST client (credentials) configured")
        options = job.options
        problems = self.validate(options)
        if problems:
            raise PermanentActionError(f"dockercloud: {'; '.join(problems)}")
        call = options.get("call")
        target = normalise(str(options.get("target") or options.get("path")))
        if not self.limiter.acquire(target, job.id):
            raise ActionSkipped(f"rate limit reached for {target}", reason="rate_limited")
        self.loop_guard.record(target)
        response = self._call(rest, str(call) if call else None, target, options)
        what = call or str(options.get("method")).upper()
        action_uri = response.headers.get(ACTION_HEADER)
        if not action_uri:
            return f"{what} {target}: HTTP {response.status_code}"
        if not _truthy(options.get("wait", False)):
            return f"{what} {target}: HTTP {response.status_code}, action {action_uri}"
        timeout = float(options.get("wait_timeout") or DEFAULT_WAIT_TIMEOUT)
        state = self._follow(action_uri, timeout)
        if state in ("Failed", "Canceled"):
            raise PermanentActionError(f"{what} {target}: action {action_uri} ended {state}")
        return f"{what} {target}: action {action_uri} {state}"

    def _call(self, rest: RestClient, call: str | None, target: str,
              options: dict[str, Any]) -> requests.Response:
        if call is None:
            return rest.request(str(options["method"]).upper(), target, json=options.get("json"))
        if call == "redeploy":
            params = {"reuse_volumes": "false"} \
                if "reuse_volumes" in options and not _truthy(options["reuse_volumes"]) else None
            return rest.request("POST", f"{target}redeploy/", params=params)
        if call == "terminate":
            return rest.request("DELETE", target)
        if call == "scale":
            try:
                count = int(options["containers"])
            except (TypeError, ValueError):
                raise PermanentActionError(
                    f"scale {target}: containers must be an integer") from None
            rest.request("PATCH", target, json={"target_num_containers": count})
            return rest.request("POST", f"{target}scale/")
        return rest.request("POST", f"{target}{call}/")

    def _follow(self, action_uri: str, timeout: float) -> str:
        """The action's terminal state; PermanentActionError if it does not end in time.

        Never retryable: retrying the job would repeat the call that already started.
        """
        ref = object_ref(action_uri)
        if ref is None:
            raise PermanentActionError(f"unusable action URI {action_uri!r}")
        path = f"/api/audit/v1/action/{ref.uuid}/"
        waiter: ActionWaiter | None = self.context.extras.get("action_waiter")
        stopping = self.context.stopping
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
                return state
            left = deadline - time.monotonic()
            if stopping.is_set():
                # The call was made; repeating it after a restart would be worse than not
                # knowing how it ended.
                logger.warning("shutdown: not following action %s to its end", action_uri)
                return f"{state or 'unknown'} (not followed: shutdown)"
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
