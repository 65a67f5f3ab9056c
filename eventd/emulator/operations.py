"""What REST actions do to the world over time: guarded, step-by-step, with their audit action.

Each operation is a generator: every `yield` is one scheduler tick, and each step changes the
world and emits the events the real service emitted, in the same order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from eventd.emulator.scheduler import Scheduler
from eventd.emulator.world import (
    Action,
    ApiError,
    Container,
    Node,
    NodeCluster,
    Obj,
    Service,
    Stack,
    World,
    exit_code_message,
    utcnow,
)

logger = logging.getLogger(__name__)

Steps = Generator[None, None, None]


# -- building blocks ---------------------------------------------------------------------------
def _stop_container(w: World, c: Container, code: int = 0) -> Steps:
    if c.state == "Running":
        w.set_state(c, "Stopping")
        yield
        c.exit_code, c.exit_code_msg = code, exit_code_message(code)
        w.set_state(c, "Stopped")
        yield


def _start_container(w: World, c: Container) -> Steps:
    w.set_state(c, "Starting")
    yield
    c.exit_code = c.exit_code_msg = None
    w.set_state(c, "Running")
    yield


def _terminate_container(w: World, c: Container) -> Steps:
    """Terminate straight away: Terminating, Terminated (event action `delete`)."""
    w.set_state(c, "Terminating")
    yield
    w.set_state(c, "Terminated", "delete")
    yield


def _retire_container(w: World, c: Container) -> Steps:
    """What a redeploy does to an old container: Stopping, Stopped, Terminated (`delete`)."""
    yield from _stop_container(w, c)
    w.set_state(c, "Terminated", "delete")
    yield


def _create_container(w: World, svc: Service, name: str | None = None,
                      node: str | None = None) -> Steps:
    c = w.new_container(svc, node=node, name=name)
    yield
    w.set_state(c, "Running")
    yield


# -- services ----------------------------------------------------------------------------------
def service_start(w: World, svc: Service, query: dict[str, str]) -> Steps:
    svc.busy = True
    w.set_state(svc, "Starting")
    yield
    live = w.containers_of(svc)
    for c in live:
        if c.state == "Stopped":
            yield from _start_container(w, c)
    for _ in range(svc.target_num_containers - len(live)):
        yield from _create_container(w, svc)
    svc.busy = False
    w.settle_service(svc)


def service_stop(w: World, svc: Service, query: dict[str, str]) -> Steps:
    svc.busy = True
    w.set_state(svc, "Stopping")
    yield
    for c in w.containers_of(svc):
        yield from _stop_container(w, c)
    svc.busy = False
    w.settle_service(svc)


def service_redeploy(w: World, svc: Service, query: dict[str, str]) -> Steps:
    svc.busy = True
    w.set_state(svc, "Redeploying")
    yield
    old = w.containers_of(svc)
    for c in old:
        yield from _retire_container(w, c)
    for index in range(svc.target_num_containers):
        previous = old[index] if index < len(old) else None
        yield from _create_container(w, svc, name=previous.name if previous else None,
                                     node=previous.node if previous else None)
    svc.busy = False
    w.settle_service(svc)


def service_scale(w: World, svc: Service, query: dict[str, str]) -> Steps:
    svc.busy = True
    w.set_state(svc, "Scaling")
    yield
    live = w.containers_of(svc)
    for _ in range(svc.target_num_containers - len(live)):
        yield from _create_container(w, svc)
    for c in reversed(live[svc.target_num_containers:]):
        yield from _terminate_container(w, c)
    svc.busy = False
    w.settle_service(svc)


def service_terminate(w: World, svc: Service, query: dict[str, str]) -> Steps:
    svc.busy = True
    w.set_state(svc, "Terminating")
    yield
    for c in w.containers_of(svc):
        yield from _terminate_container(w, c)
    w.set_state(svc, "Terminated", "delete")
    svc.busy = False
    if svc.stack:
        w.settle_stack(w.lookup("stack", svc.stack))
    yield


# -- containers --------------------------------------------------------------------------------
def _service_of(w: World, c: Container) -> Service:
    return w.lookup("service", c.service)  # type: ignore[no-any-return]


def container_start(w: World, c: Container, query: dict[str, str]) -> Steps:
    yield from _start_container(w, c)
    w.settle_service(_service_of(w, c))


def container_stop(w: World, c: Container, query: dict[str, str]) -> Steps:
    yield from _stop_container(w, c)
    w.settle_service(_service_of(w, c))


def container_redeploy(w: World, c: Container, query: dict[str, str]) -> Steps:
    svc = _service_of(w, c)
    yield from _retire_container(w, c)
    w.settle_service(svc)
    yield from _create_container(w, svc, name=c.name, node=c.node)
    w.settle_service(svc)


def container_terminate(w: World, c: Container, query: dict[str, str]) -> Steps:
    yield from _terminate_container(w, c)
    w.settle_service(_service_of(w, c))


# -- stacks ------------------------------------------------------------------------------------
def _stack_op(state: str, service_op: Callable[[World, Service, dict[str, str]], Steps],
              service_states: frozenset[str], final: str | None = None
              ) -> Callable[[World, Stack, dict[str, str]], Steps]:
    def run(w: World, stack: Stack, query: dict[str, str]) -> Steps:
        stack.busy = True
        w.set_state(stack, state)
        yield
        for svc in w.live(stack.services, "service"):
            if svc.state in service_states:
                yield from service_op(w, svc, query)
        stack.busy = False
        if final:
            w.set_state(stack, final, "delete")
        else:
            w.settle_stack(stack)
    return run


stack_start = _stack_op("Starting", service_start, frozenset({"Not running", "Stopped"}))
stack_stop = _stack_op("Stopping", service_stop, frozenset({"Running", "Partly running"}))
stack_redeploy = _stack_op("Redeploying", service_redeploy,
                           frozenset({"Running", "Partly running", "Stopped"}))
stack_terminate = _stack_op("Terminating", service_terminate,
                            frozenset({"Not running", "Running", "Partly running", "Stopped"}),
                            final="Terminated")


# -- nodes and clusters ------------------------------------------------------------------------
def _settle_services_of(w: World, containers: list[Container]) -> None:
    for service_uuid in dict.fromkeys(c.service for c in containers):
        w.settle_service(w.lookup("service", service_uuid))


def node_health_check(w: World, node: Node, query: dict[str, str]) -> Steps:
    yield
    w.set_state(node, "Deployed")
    yield


def node_docker_upgrade(w: World, node: Node, query: dict[str, str]) -> Steps:
    w.set_state(node, "Upgrading")
    yield
    running = [c for c in w.containers_on(node) if c.state == "Running"]
    for c in running:
        yield from _stop_container(w, c)
        yield from _start_container(w, c)
    w.set_state(node, "Deployed")
    _settle_services_of(w, running)
    yield


def _terminate_node(w: World, node: Node) -> Steps:
    w.set_state(node, "Terminating")
    yield
    containers = w.containers_on(node)
    for c in containers:
        yield from _terminate_container(w, c)
    w.set_state(node, "Terminated", "delete")
    _settle_services_of(w, containers)
    yield


def node_terminate(w: World, node: Node, query: dict[str, str]) -> Steps:
    yield from _terminate_node(w, node)


def nodecluster_deploy(w: World, cluster: NodeCluster, query: dict[str, str]) -> Steps:
    w.set_state(cluster, "Deploying")
    yield
    for node in w.live(cluster.nodes, "node"):
        w.set_state(node, "Deployed")
        yield
    w.set_state(cluster, "Deployed" if cluster.nodes else "Empty cluster")
    yield


def nodecluster_terminate(w: World, cluster: NodeCluster, query: dict[str, str]) -> Steps:
    w.set_state(cluster, "Terminating")
    yield
    for node in w.live(cluster.nodes, "node"):
        yield from _terminate_node(w, node)
    w.set_state(cluster, "Terminated", "delete")
    yield


# -- the registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpSpec:
    """One action: its audit label, the states that allow it (section 2.3) and its steps."""

    label: str
    allowed: frozenset[str]
    run: Callable[[World, Any, dict[str, str]], Steps]


def _ops(*states: str) -> frozenset[str]:
    return frozenset(states)


_SERVICE_LIVE = _ops("Running", "Partly running")
OPERATIONS: dict[tuple[str, str], OpSpec] = {
    ("service", "start"): OpSpec("Service Start", _ops("Not running", "Stopped"), service_start),
    ("service", "stop"): OpSpec("Service Stop", _SERVICE_LIVE, service_stop),
    ("service", "redeploy"): OpSpec("Service Redeploy", _SERVICE_LIVE | {"Stopped"},
                                    service_redeploy),
    ("service", "scale"): OpSpec("Service Scale", _SERVICE_LIVE, service_scale),
    ("service", "terminate"): OpSpec(
        "Service Terminate", _SERVICE_LIVE | {"Not running", "Stopped"}, service_terminate),
    ("container", "start"): OpSpec("Container Start", _ops("Stopped"), container_start),
    ("container", "stop"): OpSpec("Container Stop", _ops("Running"), container_stop),
    ("container", "redeploy"): OpSpec("Container Redeploy", _ops("Running", "Stopped"),
                                      container_redeploy),
    ("container", "terminate"): OpSpec("Container Terminate", _ops("Running", "Stopped"),
                                       container_terminate),
    ("stack", "start"): OpSpec("Stack Start", _ops("Not Running", "Stopped"), stack_start),
    # 2.3 lists no state allowing stack stop, but 3.3 documents the endpoint: allow it when live.
    ("stack", "stop"): OpSpec("Stack Stop", _SERVICE_LIVE, stack_stop),
    ("stack", "redeploy"): OpSpec("Stack Redeploy", _SERVICE_LIVE | {"Stopped"}, stack_redeploy),
    ("stack", "terminate"): OpSpec(
        "Stack Terminate", _SERVICE_LIVE | {"Not Running", "Stopped"}, stack_terminate),
    ("node", "health-check"): OpSpec("Node Health Check", _ops("Unreachable"), node_health_check),
    ("node", "docker-upgrade"): OpSpec("Node Docker Upgrade", _ops("Deployed"),
                                       node_docker_upgrade),
    ("node", "terminate"): OpSpec("Node Terminate", _ops("Deployed", "Unreachable"),
                                  node_terminate),
    ("nodecluster", "deploy"): OpSpec("Node Cluster Deploy", _ops("Init"), nodecluster_deploy),
    ("nodecluster", "terminate"): OpSpec(
        "Node Cluster Terminate", _ops("Init", "Deployed", "Partly deployed", "Empty cluster"),
        nodecluster_terminate),
}
POST_OPERATIONS = {op for _, op in OPERATIONS if op != "terminate"}

SERVICE_PATCH_FIELDS = frozenset({
    "autorestart", "autodestroy", "container_envvars", "container_ports", "cpu_shares",
    "entrypoint", "image", "linked_to_service", "memory", "privileged", "roles", "run_command",
    "sequential_deployment", "tags", "target_num_containers", "deployment_strategy",
    "autoredeploy", "net", "pid", "working_dir", "nickname"})
PATCH_FIELDS = {"service": SERVICE_PATCH_FIELDS, "stack": frozenset({"nickname", "services"}),
                "node": frozenset({"nickname", "tags"}),
                "nodecluster": frozenset({"target_num_nodes", "tags", "nickname"})}


@dataclass(frozen=True)
class Request:
    """The parts of the HTTP request an action records."""

    method: str = "POST"
    path: str = ""
    body: Any = None
    user_agent: str = ""
    query: dict[str, str] | None = None


class _Job:
    """One running operation: advances its steps, then settles its action."""

    def __init__(self, operator: Operator, action: Action, target: Obj, steps: Steps,
                 fail: bool) -> None:
        self.operator = operator
        self.action = action
        self.target = target
        self.steps = steps
        self.fail = fail
        self.cancelled = False
        self.done = False

    def step(self) -> float | None:
        if self.cancelled:
            return self._end("Canceled")
        try:
            next(self.steps)
        except StopIteration:
            return self._end("Success")
        if self.fail:
            return self._end("Failed")
        return self.operator.tick

    def _end(self, state: str) -> float | None:
        w = self.operator.world
        if state != "Success":
            self.steps.close()
            w.release(self.target)
        self.done = True
        self.operator.jobs.pop(self.action.uuid, None)
        self.action.end = utcnow()
        w.set_state(self.action, state)
        logger.info("action %s %s on %s: %s", self.action.name, self.action.uuid,
                    w.resource_uri(self.target.kind, self.target.uuid), state)
        return None


class Operator:
    """Starts guarded operations on the world and runs them on the scheduler."""

    def __init__(self, world: World, scheduler: Scheduler, tick: float,
                 should_fail: Callable[[], bool] = lambda: False) -> None:
        self.world = world
        self.scheduler = scheduler
        self.tick = tick
        self._should_fail = should_fail
        self.jobs: dict[str, _Job] = {}

    def perform(self, kind: str, uuid: str, op: str, request: Request) -> tuple[Obj, Action]:
        """Start `op` on an object: 400 if its state forbids it; returns (object, action)."""
        w = self.world
        spec = OPERATIONS.get((kind, op))
        if spec is None:
            raise ApiError(404, f"unknown {kind} action {op!r}")
        with w.lock:
            target = w.lookup(kind, uuid)
            if target.state not in spec.allowed:
                raise ApiError(400, f"cannot {op} {kind} {uuid}: its state is "
                                    f"'{target.state}', which does not allow {op}")
            action = self._new_action(target, spec.label, op, request)
            job = _Job(self, action, target, spec.run(w, target, dict(request.query or {})),
                       fail=self._should_fail())
            self.jobs[action.uuid] = job
            again = job.step()  # the first step happens now: the answer shows e.g. Redeploying
            if again is not None:
                self.scheduler.call_later(again, job.step)
            return target, action

    def _new_action(self, target: Obj, label: str, op: str | None, request: Request) -> Action:
        w = self.world
        body = "" if request.body is None else json.dumps(request.body)
        action = Action(uuid=w.new_uuid(), name=label, state="In progress",
                        target_kind=target.kind, target_uuid=target.uuid, op=op,
                        method=request.method, path=request.path, body=body,
                        user_agent=request.user_agent)
        w.add(action)
        w.publish(action, "create")
        logger.info("action %s %s started on %s", label, action.uuid,
                    w.resource_uri(target.kind, target.uuid))
        return action

    def patch(self, kind: str, uuid: str, changes: Any, request: Request) -> tuple[Obj, Action]:
        """Update fields (e.g. target_num_containers); a simple call: its action is Success."""
        w = self.world
        allowed = PATCH_FIELDS.get(kind)
        if allowed is None:
            raise ApiError(405, f"PATCH is not allowed on {kind}")
        if not isinstance(changes, dict):
            raise ApiError(400, "the body must be a JSON object")
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise ApiError(400, f"unknown field(s) for {kind}: {', '.join(unknown)}")
        with w.lock:
            target = w.lookup(kind, uuid)
            if target.state in ("Terminating", "Terminated"):
                raise ApiError(400, f"cannot update {kind} {uuid}: its state is '{target.state}'")
            for key, value in changes.items():
                if key in ("target_num_containers", "target_num_nodes"):
                    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                        raise ApiError(400, f"{key} must be a non-negative integer")
                    setattr(target, key, value)
                elif key == "image" and isinstance(target, Service):
                    target.image = str(value)
                else:
                    target.extra[key] = value
            action = self._new_action(target, f"{kind.capitalize()} Update", None, request)
            action.end = utcnow()
            w.set_state(action, "Success")
            w.publish(target)
            return target, action

    def cancel(self, uuid: str) -> Action:
        """Cancel a Pending or In progress action: Canceling now, Canceled at the next tick."""
        w = self.world
        with w.lock:
            action: Action = w.lookup("action", uuid)
            if action.state not in ("Pending", "In progress"):
                raise ApiError(400, f"cannot cancel action {uuid}: its state is '{action.state}'")
            w.set_state(action, "Canceling")
            job = self.jobs.get(uuid)
            if job is not None:
                job.cancelled = True
            else:
                self.scheduler.call_later(self.tick, lambda: self._mark(action, "Canceled"))
            return action

    def retry(self, uuid: str, request: Request) -> Action:
        """Run a finished action's operation again; returns the new action."""
        w = self.world
        with w.lock:
            action: Action = w.lookup("action", uuid)
            if action.state not in ("Success", "Failed", "Canceled"):
                raise ApiError(400, f"cannot retry action {uuid}: its state is '{action.state}'")
            if action.op is None:
                raise ApiError(400, f"action {uuid} ({action.name}) cannot be retried")
            _, new = self.perform(action.target_kind, action.target_uuid, action.op,
                                  Request(method=action.method, path=action.path,
                                          user_agent=request.user_agent))
            return new

    def failed_action(self, target: Obj, label: str) -> Action:
        """An action that starts In progress and ends Failed without touching its target."""
        w = self.world
        op = next((o for (k, o), spec in OPERATIONS.items()
                   if k == target.kind and spec.label == label), None)
        path = w.resource_uri(target.kind, target.uuid) + (f"{op}/" if op else "")
        with w.lock:
            action = self._new_action(target, label, op, Request(path=path))
            self.scheduler.call_later(self.tick, lambda: self._mark(action, "Failed"))
            return action

    def _mark(self, action: Action, state: str) -> None:
        action.end = utcnow()
        self.world.set_state(action, state)
        logger.info("action %s %s: %s", action.name, action.uuid, state)
