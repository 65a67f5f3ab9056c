"""The emulator's in-memory Docker Cloud: objects, their URIs and JSON, the events of changes.

Every change goes through `World.set_state`/`publish`, which emit the documented event while the
caller holds `World.lock`, so the REST view and the stream agree at every moment.
"""

from __future__ import annotations

import email.utils
import random
import threading
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

KINDS = ("stack", "service", "container", "node", "nodecluster", "action")
APP_KINDS = frozenset({"stack", "service", "container"})
INFRA_KINDS = frozenset({"node", "nodecluster"})

DEFAULT_NAMESPACE = "user"
DEFAULT_NODECLUSTER_UUID = "4dc88e8f-96e9-474e-ae8d-1beb2070489a"
DEFAULT_NODE_UUIDS = ("15c0e836-e2bb-4f19-b5eb-e93e27784a9b",
                      "a6bcd809-3025-493a-8e68-8400e2c90176")
DEFAULT_STACK_UUID = "4107132e-6500-46aa-813b-933c14e8f3e1"
DEFAULT_SERVICE_UUIDS = {"web": "1709048e-d686-414f-9acc-c149de6c3d02",
                         "db": "fd16adc3-24c2-4e6f-9bda-92ea16bf5822"}
DEFAULT_CONTAINER_UUIDS = {"web-1": "273e79a1-698d-44dd-86dd-561964818f1d",
                           "web-2": "6d1ce712-ef54-4415-a3c3-9f7e35d638f4",
                           "db-1": "159f84fe-55df-4d3e-85a7-208d6e55f67f"}
_DEFAULT_UUIDS = {
    ("nodecluster", "production"): DEFAULT_NODECLUSTER_UUID,
    ("node", "node-1"): DEFAULT_NODE_UUIDS[0], ("node", "node-2"): DEFAULT_NODE_UUIDS[1],
    ("stack", "demo"): DEFAULT_STACK_UUID,
    **{("service", name): value for name, value in DEFAULT_SERVICE_UUIDS.items()},
    **{("container", name): value for name, value in DEFAULT_CONTAINER_UUIDS.items()},
}

EVENT_FIELDS = ("type", "action", "parents", "resource_uri", "state", "uuid", "datetime")


@dataclass(frozen=True)
class ServiceSpec:
    """A service of a scenario world."""

    name: str
    image: str = "dockercloud/hello-world:latest"
    containers: int = 1
    stack: str | None = None


@dataclass(frozen=True)
class WorldSpec:
    """The shape of a world: one node cluster, its nodes, stacks and services."""

    stacks: tuple[str, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    nodes: int = 1
    nodecluster: str = "production"
    default: bool = False


DEFAULT_WORLD = WorldSpec(
    stacks=("demo",),
    services=(ServiceSpec("web", "dockercloud/hello-world:latest", 2, "demo"),
              ServiceSpec("db", "postgres:9.6", 1, "demo")),
    nodes=2, nodecluster="production", default=True)


class ApiError(Exception):
    """A REST error answer: HTTP status and the `{"error": ...}` message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def utcnow() -> datetime:
    """Now in UTC, whole seconds (what both datetime formats can show)."""
    return datetime.now(timezone.utc).replace(microsecond=0)


def rfc2822(value: datetime | None) -> str | None:
    """REST datetime format: `Mon, 13 Oct 2014 11:01:43 +0000`."""
    return None if value is None else email.utils.format_datetime(value)


def iso8601(value: datetime) -> str:
    """Event datetime format: `2016-02-01T16:47:28Z`."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def uri_key(uri: str) -> str:
    """`<type>/<uuid>` from the tail of a resource URI, so namespaced and bare URIs agree."""
    parts = [part for part in uri.split("?", 1)[0].split("/") if part]
    return "/".join(parts[-2:])


@dataclass(eq=False, kw_only=True)
class Obj:
    """State common to every Docker Cloud object."""

    kind: ClassVar[str] = ""
    uuid: str
    name: str
    state: str
    created: datetime = field(default_factory=utcnow)
    deployed: datetime | None = None
    started: datetime | None = None
    stopped: datetime | None = None
    destroyed: datetime | None = None
    busy: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False, kw_only=True)
class NodeCluster(Obj):
    """A node cluster."""

    kind: ClassVar[str] = "nodecluster"
    nodes: list[str] = field(default_factory=list)
    target_num_nodes: int = 0


@dataclass(eq=False, kw_only=True)
class Node(Obj):
    """A node (its `name` is the nickname, e.g. node-1)."""

    kind: ClassVar[str] = "node"
    cluster: str | None = None
    public_ip: str = ""


@dataclass(eq=False, kw_only=True)
class Stack(Obj):
    """A stack."""

    kind: ClassVar[str] = "stack"
    services: list[str] = field(default_factory=list)


@dataclass(eq=False, kw_only=True)
class Service(Obj):
    """A service."""

    kind: ClassVar[str] = "service"
    image: str
    stack: str | None = None
    target_num_containers: int = 1
    containers: list[str] = field(default_factory=list)
    next_index: int = 1


@dataclass(eq=False, kw_only=True)
class Container(Obj):
    """A container (its `name` is `<service>-<n>`)."""

    kind: ClassVar[str] = "container"
    service: str
    node: str | None = None
    image: str = ""
    exit_code: int | None = None
    exit_code_msg: str | None = None
    private_ip: str = ""


@dataclass(eq=False, kw_only=True)
class Action(Obj):
    """An audit action (its `name` is the human label, e.g. "Service Redeploy")."""

    kind: ClassVar[str] = "action"
    target_kind: str
    target_uuid: str
    op: str | None = None
    method: str = "POST"
    path: str = ""
    body: str = ""
    user_agent: str = ""
    end: datetime | None = None


def exit_code_message(code: int | None) -> str | None:
    """The `exit_code_msg` text of a container that exited with `code`."""
    if code is None:
        return None
    return "Exit code 0 (Success)" if code == 0 else f"Exit code {code} (Failure)"


class World:
    """Every object of one emulated account, guarded by `lock`; emits an event per change."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE,
                 emit: Callable[[dict[str, Any]], None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.namespace = namespace
        self.lock = threading.RLock()
        self._emit = emit or (lambda event: None)
        self._rng = rng or random.Random()
        self._seeded = rng is not None
        self._objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self._ip = 2

    # -- identity -----------------------------------------------------------------------------
    def new_uuid(self) -> str:
        """A fresh uuid4 (reproducible when the emulator has a seed)."""
        if self._seeded:
            return str(uuidlib.UUID(int=self._rng.getrandbits(128), version=4))
        return str(uuidlib.uuid4())

    def resource_uri(self, kind: str, uuid: str) -> str:
        """The namespaced resource URI of an object (actions are never namespaced)."""
        if kind == "action":
            return f"/api/audit/v1/action/{uuid}/"
        subsystem = "app" if kind in APP_KINDS else "infra"
        return f"/api/{subsystem}/v1/{self.namespace}/{kind}/{uuid}/"

    def uri(self, kind: str, name_or_uuid: str | int) -> str:
        """Resource URI of an object given by name (`web`, `web-1`, `node-2`), uuid or index."""
        return self.resource_uri(kind, self.find(kind, name_or_uuid).uuid)

    def uuid(self, kind: str, name_or_uuid: str | int) -> str:
        """Uuid of an object given by name, uuid or index."""
        found: Obj = self.find(kind, name_or_uuid)
        return found.uuid

    def find(self, kind: str, name_or_uuid: str | int) -> Any:
        """The object by uuid, name (live and newest first) or index; KeyError if none."""
        table = self._objects[kind]
        with self.lock:
            if isinstance(name_or_uuid, int):
                return list(table.values())[name_or_uuid]
            if name_or_uuid in table:
                return table[name_or_uuid]
            named = [obj for obj in table.values() if obj.name == name_or_uuid]
            live = [obj for obj in named if obj.state != "Terminated"]
            if live or named:
                return (live or named)[-1]
        raise KeyError(f"no {kind} {name_or_uuid!r}")

    def lookup(self, kind: str, uuid: str) -> Any:
        """The object with this uuid, or an ApiError 404."""
        obj = self._objects.get(kind, {}).get(uuid)
        if obj is None:
            raise ApiError(404, f"{kind} {uuid} not found")
        return obj

    def objects(self, kind: str) -> list[Any]:
        """Every object of a kind, oldest first (terminated ones included)."""
        with self.lock:
            return list(self._objects[kind].values())

    def get(self, kind: str, uuid: str) -> dict[str, Any]:
        """The REST JSON of one object (KeyError if unknown)."""
        with self.lock:
            obj = self._objects[kind].get(uuid)
            if obj is None:
                raise KeyError(f"no {kind} {uuid}")
            return self.to_json(obj)

    def add(self, obj: Obj) -> Obj:
        """Register an object (no event)."""
        self._objects[obj.kind][obj.uuid] = obj
        return obj

    # -- relations ----------------------------------------------------------------------------
    def live(self, uuids: list[str], kind: str) -> list[Any]:
        """The objects among `uuids` that are not terminated."""
        table = self._objects[kind]
        return [table[u] for u in uuids if u in table and table[u].state != "Terminated"]

    def containers_of(self, service: Service) -> list[Container]:
        """The service's containers that are not terminated."""
        return self.live(service.containers, "container")

    def containers_on(self, node: Node) -> list[Container]:
        """Live containers placed on a node."""
        return [c for c in self._objects["container"].values()
                if isinstance(c, Container) and c.node == node.uuid and c.state != "Terminated"]

    def parents(self, obj: Obj) -> list[str]:
        """Documented parents: container → service, stack, node, cluster; service → stack..."""
        uris: list[str] = []
        if isinstance(obj, Container):
            service = self._objects["service"].get(obj.service)
            uris.append(self.resource_uri("service", obj.service))
            if isinstance(service, Service) and service.stack:
                uris.append(self.resource_uri("stack", service.stack))
            node = self._objects["node"].get(obj.node or "")
            if isinstance(node, Node):
                uris.append(self.resource_uri("node", node.uuid))
                if node.cluster:
                    uris.append(self.resource_uri("nodecluster", node.cluster))
        elif isinstance(obj, Service) and obj.stack:
            uris.append(self.resource_uri("stack", obj.stack))
        elif isinstance(obj, Node) and obj.cluster:
            uris.append(self.resource_uri("nodecluster", obj.cluster))
        elif isinstance(obj, Action):
            uris.append(self.resource_uri(obj.target_kind, obj.target_uuid))
        return uris

    def related_keys(self, kind: str, uuid: str) -> set[str]:
        """`<type>/<uuid>` keys whose actions `include_related=true` adds (section 3.5)."""
        keys = {f"{kind}/{uuid}"}
        obj = self._objects.get(kind, {}).get(uuid)
        if isinstance(obj, Container):
            keys.add(f"service/{obj.service}")
            service = self._objects["service"].get(obj.service)
            if isinstance(service, Service) and service.stack:
                keys.add(f"stack/{service.stack}")
        elif isinstance(obj, Service):
            keys |= {f"container/{c}" for c in obj.containers}
            if obj.stack:
                keys.add(f"stack/{obj.stack}")
        elif isinstance(obj, Stack):
            for service_uuid in obj.services:
                keys.add(f"service/{service_uuid}")
                service = self._objects["service"].get(service_uuid)
                if isinstance(service, Service):
                    keys |= {f"container/{c}" for c in service.containers}
        elif isinstance(obj, Node) and obj.cluster:
            keys.add(f"nodecluster/{obj.cluster}")
        elif isinstance(obj, NodeCluster):
            keys |= {f"node/{n}" for n in obj.nodes}
        return keys

    # -- events -------------------------------------------------------------------------------
    def publish(self, obj: Obj, action: str = "update") -> dict[str, Any]:
        """Emit the event describing the object's current state."""
        event = {"type": obj.kind, "action": action, "parents": self.parents(obj),
                 "resource_uri": self.resource_uri(obj.kind, obj.uuid), "state": obj.state,
                 "uuid": self.new_uuid(), "datetime": iso8601(utcnow())}
        self._emit(event)
        return event

    def set_state(self, obj: Obj, state: str, action: str = "update") -> None:
        """Change an object's state, keep its timestamps right, and emit the event."""
        now = utcnow()
        obj.state = state
        if state in ("Running", "Deployed") and obj.kind != "action":
            obj.started = now
            obj.deployed = obj.deployed or now
        elif state == "Stopped":
            obj.stopped = now
        elif state == "Terminated":
            obj.destroyed = now
        self.publish(obj, action)

    # -- building blocks used by operations ---------------------------------------------------
    def next_ip(self) -> str:
        """A private overlay address 10.7.x.y."""
        self._ip += 1
        return f"10.7.{self._ip // 250}.{self._ip % 250 + 1}"

    def pick_node(self) -> str | None:
        """The deployed node with the fewest live containers (emptiest_node)."""
        nodes = [n for n in self._objects["node"].values() if n.state == "Deployed"]
        if not nodes:
            nodes = [n for n in self._objects["node"].values() if n.state != "Terminated"]
        if not nodes:
            return None
        return min(nodes, key=lambda n: len(self.containers_on(n))).uuid  # type: ignore[arg-type]

    def new_container(self, service: Service, state: str = "Starting", uuid: str | None = None,
                      node: str | None = None, announce: bool = True,
                      name: str | None = None) -> Container:
        """Create a container of `service` (event `create`, state Starting by default)."""
        if name is None:
            name = f"{service.name}-{service.next_index}"
            service.next_index += 1
        container = Container(uuid=uuid or self.new_uuid(), name=name, state=state,
                              service=service.uuid, node=node or self.pick_node(),
                              image=service.image, private_ip=self.next_ip())
        if state == "Running":
            container.deployed = container.started = utcnow()
        service.containers.append(container.uuid)
        self.add(container)
        if announce:
            self.publish(container, "create")
        return container

    def settle_service(self, service: Service) -> None:
        """Recompute a service's state from its containers (unless an operation holds it)."""
        if service.busy or service.state == "Terminated":
            return
        live = self.containers_of(service)
        running = sum(1 for c in live if c.state == "Running")
        if not live:
            state = "Not running"
        elif running == 0:
            state = "Stopped"
        elif running == len(live) and running >= service.target_num_containers:
            state = "Running"
        else:
            state = "Partly running"
        if state != service.state:
            self.set_state(service, state)
        if service.stack:
            self.settle_stack(self.lookup("stack", service.stack))

    def settle_stack(self, stack: Stack) -> None:
        """Recompute a stack's state from its services (unless an operation holds it)."""
        if stack.busy or stack.state == "Terminated":
            return
        services = self.live(stack.services, "service")
        states = {s.state for s in services}
        if not services:
            state = "Not Running"
        elif states == {"Running"}:
            state = "Running"
        elif states <= {"Stopped", "Not running"}:
            state = "Stopped"
        else:
            state = "Partly running"
        if state != stack.state:
            self.set_state(stack, state)

    def release(self, obj: Obj) -> None:
        """Clear the busy marks an interrupted operation left, then settle states."""
        obj.busy = False
        if isinstance(obj, Stack):
            for service in self.live(obj.services, "service"):
                service.busy = False
                self.settle_service(service)
            self.settle_stack(obj)
        elif isinstance(obj, Service):
            self.settle_service(obj)
        elif isinstance(obj, Container):
            self.settle_service(self.lookup("service", obj.service))

    # -- JSON ---------------------------------------------------------------------------------
    def to_json(self, obj: Obj) -> dict[str, Any]:
        """The REST representation (key fields of sections 3.4 and 3.5)."""
        render = getattr(self, f"_json_{obj.kind}")
        body: dict[str, Any] = render(obj)
        body.update(obj.extra)
        return body

    def _common(self, obj: Obj) -> dict[str, Any]:
        return {"uuid": obj.uuid, "resource_uri": self.resource_uri(obj.kind, obj.uuid),
                "state": obj.state}

    def _json_nodecluster(self, obj: NodeCluster) -> dict[str, Any]:
        live = self.live(obj.nodes, "node")
        return {**self._common(obj), "name": obj.name, "nickname": obj.name,
                "nodes": [self.resource_uri("node", n) for n in obj.nodes],
                "node_type": "/api/infra/v1/nodetype/aws/t2.micro/",
                "region": "/api/infra/v1/region/aws/us-east-1/", "disk": 60,
                "target_num_nodes": obj.target_num_nodes, "current_num_nodes": len(live),
                "tags": [], "provider_options": {},
                "deployed_datetime": rfc2822(obj.deployed),
                "destroyed_datetime": rfc2822(obj.destroyed)}

    def _json_node(self, obj: Node) -> dict[str, Any]:
        return {**self._common(obj), "nickname": obj.name,
                "external_fqdn": f"{obj.uuid}.node.dockerapp.io",
                "node_cluster": (self.resource_uri("nodecluster", obj.cluster)
                                 if obj.cluster else None),
                "node_type": "/api/infra/v1/nodetype/aws/t2.micro/",
                "region": "/api/infra/v1/region/aws/us-east-1/",
                "availability_zone": "/api/infra/v1/az/aws/us-east-1/us-east-1a/",
                "public_ip": obj.public_ip, "private_ips": [],
                "docker_version": "1.11.2-cs5", "cpu": 1, "memory": 1024, "disk": 60,
                "current_num_containers": len(self.containers_on(obj)),
                "last_seen": rfc2822(utcnow() if obj.state == "Deployed" else obj.stopped),
                "tunnel": f"https://tunnel.dockerapp.io:{obj.public_ip.rsplit('.', 1)[-1]}",
                "tags": [], "deployed_datetime": rfc2822(obj.deployed),
                "destroyed_datetime": rfc2822(obj.destroyed)}

    def _json_stack(self, obj: Stack) -> dict[str, Any]:
        return {**self._common(obj), "name": obj.name, "nickname": obj.name,
                "synchronized": True,
                "services": [self.resource_uri("service", s) for s in obj.services],
                "deployed_datetime": rfc2822(obj.deployed),
                "destroyed_datetime": rfc2822(obj.destroyed)}

    def _json_service(self, obj: Service) -> dict[str, Any]:
        live = self.containers_of(obj)
        return {**self._common(obj), "name": obj.name, "nickname": obj.name,
                "image_name": obj.image,
                "stack": self.resource_uri("stack", obj.stack) if obj.stack else None,
                "containers": [self.resource_uri("container", c.uuid) for c in live],
                "target_num_containers": obj.target_num_containers,
                "current_num_containers": len(live),
                "running_num_containers": sum(1 for c in live if c.state == "Running"),
                "stopped_num_containers": sum(1 for c in live if c.state == "Stopped"),
                "synchronized": True, "autorestart": "OFF", "autodestroy": "OFF",
                "autoredeploy": False, "deployment_strategy": "EMPTIEST_NODE",
                "sequential_deployment": False, "roles": [], "tags": [],
                "linked_to_service": [], "linked_from_service": [], "container_ports": [],
                "container_envvars": [], "link_variables": {},
                "public_dns": f"{obj.name}.{obj.uuid[:8]}.svc.dockerapp.io",
                "deployed_datetime": rfc2822(obj.deployed),
                "started_datetime": rfc2822(obj.started),
                "stopped_datetime": rfc2822(obj.stopped),
                "destroyed_datetime": rfc2822(obj.destroyed),
                "net": "bridge", "privileged": False}

    def _json_container(self, obj: Container) -> dict[str, Any]:
        return {**self._common(obj), "name": obj.name, "image_name": obj.image,
                "exit_code": obj.exit_code, "exit_code_msg": obj.exit_code_msg,
                "node": self.resource_uri("node", obj.node) if obj.node else None,
                "service": self.resource_uri("service", obj.service),
                "public_dns": f"{obj.name}.{obj.uuid[:8]}.cont.dockerapp.io",
                "private_ip": obj.private_ip, "synchronized": True,
                "deployed_datetime": rfc2822(obj.deployed),
                "started_datetime": rfc2822(obj.started),
                "stopped_datetime": rfc2822(obj.stopped),
                "destroyed_datetime": rfc2822(obj.destroyed),
                "autorestart": "OFF", "autodestroy": "OFF", "roles": [],
                "container_ports": [], "container_envvars": [], "linked_to_container": [],
                "link_variables": {}, "bindings": [], "labels": {}, "entrypoint": "",
                "run_command": "", "cpu_shares": None, "memory": None, "net": "bridge",
                "pid": "none", "privileged": False}

    def _json_action(self, obj: Action) -> dict[str, Any]:
        return {**self._common(obj), "action": obj.name, "method": obj.method,
                "object": self.resource_uri(obj.target_kind, obj.target_uuid),
                "path": obj.path, "body": obj.body, "logs": "",
                "start_date": rfc2822(obj.created), "end_date": rfc2822(obj.end),
                "ip": "127.0.0.1", "location": "Emulator", "is_user_action": True,
                "can_be_canceled": obj.state in ("Pending", "In progress"),
                "can_be_retried": obj.state in ("Success", "Failed", "Canceled"),
                "user": self.namespace, "user_agent": obj.user_agent}

    # -- summary ------------------------------------------------------------------------------
    def summary(self) -> dict[str, list[dict[str, str]]]:
        """Kind → [{uuid, name, state}] for the control endpoint."""
        with self.lock:
            return {kind: [{"uuid": o.uuid, "name": o.name, "state": o.state}
                           for o in table.values()]
                    for kind, table in self._objects.items()}


def build_world(world: World, spec: WorldSpec) -> None:
    """Populate an empty world from a spec; the default spec uses the fixed uuids."""

    def ident(kind: str, name: str) -> str:
        if spec.default:
            return _DEFAULT_UUIDS[(kind, name)]
        return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"eventd-emulator:{kind}:{name}"))

    with world.lock:
        cluster = NodeCluster(uuid=ident("nodecluster", spec.nodecluster), name=spec.nodecluster,
                              state="Deployed", target_num_nodes=spec.nodes)
        cluster.deployed = cluster.created
        world.add(cluster)
        for index in range(spec.nodes):
            name = f"node-{index + 1}"
            node = Node(uuid=ident("node", name), name=name, state="Deployed",
                        cluster=cluster.uuid, public_ip=f"52.0.0.{index + 10}")
            node.deployed = node.started = node.created
            world.add(node)
            cluster.nodes.append(node.uuid)
        stacks: dict[str, Stack] = {}
        for stack_name in spec.stacks:
            stack = Stack(uuid=ident("stack", stack_name), name=stack_name, state="Running")
            stack.deployed = stack.started = stack.created
            stacks[stack_name] = world.add(stack)  # type: ignore[assignment]
        for service_spec in spec.services:
            stack_obj = stacks.get(service_spec.stack) if service_spec.stack else None
            service = Service(uuid=ident("service", service_spec.name), name=service_spec.name,
                              image=service_spec.image,
                              state="Running" if service_spec.containers else "Not running",
                              stack=stack_obj.uuid if stack_obj else None,
                              target_num_containers=service_spec.containers)
            service.deployed = service.started = service.created
            world.add(service)
            if stack_obj:
                stack_obj.services.append(service.uuid)
            for index in range(service_spec.containers):
                name = f"{service_spec.name}-{index + 1}"
                world.new_container(service, state="Running", uuid=ident("container", name),
                                    announce=False)
        for stack in stacks.values():
            if not stack.services:
                stack.state = "Not Running"
