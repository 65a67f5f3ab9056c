"""Docker Cloud REST semantics (section 3): routes a request to the world and shapes the answer."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eventd.emulator.operations import OPERATIONS, POST_OPERATIONS, Operator, Request
from eventd.emulator.queries import page
from eventd.emulator.world import APP_KINDS, Action, ApiError, World

ACTION_HEADER = "X-DockerCloud-Action-URI"
_OBJECTS = re.compile(r"^/api/(?P<sub>app|infra)/v1/(?:(?P<ns>[^/]+)/)?"
                      r"(?P<kind>stack|service|container|nodecluster|node)"
                      r"(?:/(?P<uuid>[^/]+)(?:/(?P<op>[^/]+))?)?/?$")
_ACTIONS = re.compile(r"^/api/audit/v1/action(?:/(?P<uuid>[^/]+)(?:/(?P<op>[^/]+))?)?/?$")


@dataclass
class Reply:
    """An HTTP answer: status, JSON body and extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, message: str) -> Reply:
    """The documented error shape `{"error": "..."}`."""
    return Reply(status, {"error": message})


class RestApi:
    """Answers authenticated REST calls against one world."""

    def __init__(self, world: World, operator: Operator,
                 ignore_dates: Callable[[], bool] = lambda: False,
                 namespaces: tuple[str, ...] = ()) -> None:
        self.world = world
        self.operator = operator
        self._ignore_dates = ignore_dates  # a fault: a server that ignores date filters
        self.namespaces = frozenset({world.namespace, *namespaces})

    def handle(self, method: str, path: str, query: dict[str, str], body: Any,
               user_agent: str) -> Reply:
        """Route one call; ApiError becomes its status with an error body."""
        request = Request(method=method, path=path, body=body, user_agent=user_agent,
                          query=query)
        try:
            match = _ACTIONS.match(path)
            if match:
                return self._actions(method, path, match["uuid"], match["op"], query, request)
            match = _OBJECTS.match(path)
            if match:
                kind = match["kind"]
                if (kind in APP_KINDS) != (match["sub"] == "app"):
                    raise ApiError(404, f"{kind} lives under /api/"
                                        f"{'app' if kind in APP_KINDS else 'infra'}/v1/")
                if match["ns"] not in (None, *self.namespaces):
                    raise ApiError(404, f"namespace {match['ns']!r} not found")
                return self._objects(method, path, kind, match["uuid"], match["op"], query,
                                     request)
            raise ApiError(404, f"no such endpoint: {path}")
        except ApiError as exc:
            return error(exc.status, exc.message)

    def _accepted(self, obj_json: dict[str, Any], action: Action, status: int = 202) -> Reply:
        uri = self.world.resource_uri("action", action.uuid)
        return Reply(status, obj_json, {ACTION_HEADER: uri})

    def _objects(self, method: str, path: str, kind: str, uuid: str | None, op: str | None,
                 query: dict[str, str], request: Request) -> Reply:
        w = self.world
        if uuid is None:
            if method != "GET":
                raise ApiError(405, f"{method} is not allowed on the {kind} list "
                                    "(the emulator does not create objects)")
            return Reply(200, page(w, path, kind, query))
        if op is None:
            if method == "GET":
                with w.lock:
                    return Reply(200, w.to_json(w.lookup(kind, uuid)))
            if method == "PATCH":
                target, action = self.operator.patch(kind, uuid, request.body, request)
                with w.lock:
                    return self._accepted(w.to_json(target), action, status=200)
            if method == "DELETE":
                return self._perform(kind, uuid, "terminate", request)
            raise ApiError(405, f"{method} is not allowed on a {kind}")
        if (kind, op) not in OPERATIONS or op not in POST_OPERATIONS:
            with w.lock:
                w.lookup(kind, uuid)
            raise ApiError(404, f"unknown {kind} endpoint {op!r}")
        if method != "POST":
            raise ApiError(405, f"{kind} {op} needs POST, not {method}")
        return self._perform(kind, uuid, op, request)

    def _perform(self, kind: str, uuid: str, op: str, request: Request) -> Reply:
        target, action = self.operator.perform(kind, uuid, op, request)
        with self.world.lock:
            return self._accepted(self.world.to_json(target), action)

    def _actions(self, method: str, path: str, uuid: str | None, op: str | None,
                 query: dict[str, str], request: Request) -> Reply:
        w = self.world
        if uuid is None:
            if method != "GET":
                raise ApiError(405, f"{method} is not allowed on the action list")
            return Reply(200, page(w, path, "action", query, ignore_dates=self._ignore_dates()))
        if op is None:
            if method != "GET":
                raise ApiError(405, f"{method} is not allowed on an action")
            with w.lock:
                return Reply(200, w.to_json(w.lookup("action", uuid)))
        if op not in ("cancel", "retry"):
            raise ApiError(404, f"unknown action endpoint {op!r}")
        if method != "POST":
            raise ApiError(405, f"action {op} needs POST, not {method}")
        if op == "cancel":
            action = self.operator.cancel(uuid)
        else:
            action = self.operator.retry(uuid, request)
        with w.lock:
            return self._accepted(w.to_json(action), action)
