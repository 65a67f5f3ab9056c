"""The gate's policies: what an Outbound may send, judged from configuration only.

A policy is a function `(policy, job, outbound, grant) -> Problem | None` registered by name
in POLICIES; an Outbound names the one that judges it (`Outbound.policy`). `Policy` holds
what they read: --allow-host, --allow-plaintext, the Docker Cloud namespaces, the REST host,
whether events come from the Engine, eventd's own container. It is built from Settings and
never from a job or an event. `own_container_id` finds eventd's container from /proc.
"""

from __future__ import annotations

import fnmatch
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from eventd.outbound import Address, BadAddress, Outbound, parse_url
from eventd.records import ActionJob

if TYPE_CHECKING:
    from eventd.settings import Settings


class Problem(NamedTuple):
    """Why the gate refuses: a bounded metric label and a sentence."""

    reason: str
    message: str


@dataclass(frozen=True)
class Grant:
    """What one action of a loaded rule can produce: the options written without a template
    (a job's must equal them), every option it may hold, and its queue unless a template
    decides it."""

    kind: str
    literals: Mapping[str, Any]
    keys: frozenset[str]
    target: str | None


@dataclass(frozen=True)
class Policy:
    """What the gate admits, from configuration only."""

    allow_hosts: tuple[str, ...] = ()
    allow_plaintext: bool = False
    #: the Docker Cloud namespaces a call may name (besides none): DOCKERCLOUD_NAMESPACE's, and
    #: the user's own (the credentials' user name) when it is known
    namespaces: frozenset[str] = frozenset()
    #: the REST host every dockercloud call goes to
    rest: Address | None = None
    #: events come from the Engine (the docker source), so an event's container id is the
    #: Engine's own word; from any other source it is data and names nothing
    engine_events: bool = False
    #: eventd's own container (a full id, a 12-hex prefix or a name): never acted on
    own_container: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, user: str | None = None,
                      own_container: str | None = None, rest_host: str | None = None) -> Policy:
        """The policy `settings` describe; `user` is the credentials' user name, if known;
        `rest_host` the REST client's, when it is not the settings' (tests)."""
        try:
            rest: Address | None = parse_url(rest_host or settings.rest_host)[0]
        except BadAddress:
            rest = None
        # A path without a namespace is the user's own: naming it is the same call.
        namespaces = {*settings.namespaces, *((user,) if user else ())}
        return cls(allow_hosts=tuple(settings.allow_hosts),
                   allow_plaintext=settings.allow_plaintext, namespaces=frozenset(namespaces),
                   rest=rest, engine_events=settings.source == "docker",
                   own_container=settings.self_container or own_container)


Check = Callable[[Policy, ActionJob, Outbound, "Grant | None"], "Problem | None"]

# -- http: webhooks, Alertmanager, and every future plain-HTTPS kind ------------------------------
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


def host_allowed(policy: Policy, host: str) -> bool:
    """Whether --allow-host lets a call go to `host` (no patterns: every host)."""
    return not policy.allow_hosts or any(fnmatch.fnmatchcase(host, pattern.lower())
                                         for pattern in policy.allow_hosts)


def plaintext(policy: Policy, address: Address, credentials: bool) -> Problem | None:
    """Credentials in clear to another machine, unless --allow-plaintext."""
    if credentials and address.scheme in ("http", "ws") and not address.loopback \
            and not policy.allow_plaintext:
        return Problem("plaintext", f"credentials would go in clear to {address.origin} (use "
                                    "https://, or --allow-plaintext if that is intended)")
    return None


def http_policy(policy: Policy, job: ActionJob, outbound: Outbound,
                grant: Grant | None) -> Problem | None:
    """The parsed host is allowed, the path climbs nowhere, no credentials in clear."""
    for call in outbound.calls:
        address = call.address
        if address.scheme not in ("http", "https"):
            return Problem("url", f"{address.scheme}:// is not an HTTP URL")
        if _DOT_SEGMENT.search(address.path):
            return Problem("path", "url path must not hold '.' or '..' segments")
        if not host_allowed(policy, address.host):
            return Problem("host", f"host {address.host!r} is not allowed by --allow-host "
                                   f"({', '.join(policy.allow_hosts)})")
        problem = plaintext(policy, address, call.credentials)
        if problem is not None:
            return problem
    return None


# -- dockercloud: the reference's REST grammar (sections 3.3 to 3.6) ------------------------------
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_NAMESPACE = r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*"
_OBJECT_PATH = re.compile(
    rf"/api/(?P<api>app|infra)/v1/(?:(?P<ns>{_NAMESPACE})/)?"
    rf"(?P<type>stack|service|container|nodecluster|node)/"
    rf"(?:(?P<uuid>{_UUID})/(?:(?P<op>[a-z-]+)/"
    rf"(?:(?P<trigger>{_UUID})/(?:(?P<trigger_op>call)/)?)?)?)?")
_ACTION_PATH = re.compile(rf"/api/audit/v1/action/(?:(?P<uuid>{_UUID})/(?:(?P<op>cancel|retry)/)?)?")
_API = {"stack": "app", "service": "app", "container": "app", "node": "infra", "nodecluster": "infra"}
#: POST <object>/<op>/ and the types each applies to
OPERATIONS: dict[str, frozenset[str]] = {
    "start": frozenset({"service", "container", "stack"}),
    "stop": frozenset({"service", "container", "stack"}),
    "redeploy": frozenset({"service", "container", "stack"}),
    "scale": frozenset({"service"}),
    "deploy": frozenset({"nodecluster"}),
    "docker-upgrade": frozenset({"node", "nodecluster"}),
    "health-check": frozenset({"node"}),
}
_PATCHABLE = frozenset({"service", "stack", "node", "nodecluster"})
_REUSE_VOLUMES = re.compile(r"reuse_volumes=(?:true|false)")


def rest_path(policy: Policy, address: Address) -> str | None:
    """The API path of a call to the REST host (None: the call goes elsewhere)."""
    rest = policy.rest
    if rest is None or (address.scheme, address.host, address.port) != \
            (rest.scheme, rest.host, rest.port):
        return None
    prefix = rest.path.rstrip("/")
    if not address.path.startswith(prefix + "/"):
        return None
    return address.path[len(prefix):]


def dockercloud_call(method: str, path: str, query: str) -> Problem | None:
    """Whether one REST call is one the reference documents, on a type it applies to."""
    match = _OBJECT_PATH.fullmatch(path)
    if match is not None:
        kind, op = match["type"], match["op"]
        if _API[kind] != match["api"]:
            return Problem("path", f"a {kind} lives under /api/{_API[kind]}/v1/")
        if query and not (op == "redeploy" and method == "POST"
                          and _REUSE_VOLUMES.fullmatch(query)):
            return Problem("path", "the call takes no query")
        if match["uuid"] is None:
            return None if method == "GET" else Problem("call", f"{method} on a {kind} list")
        if op is None:
            allowed = {"GET", "DELETE"} | ({"PATCH"} if kind in _PATCHABLE else set())
            return None if method in allowed else Problem("call", f"{method} on a {kind}")
        if op == "trigger" and kind == "service":
            if match["trigger"] is None:
                return None if method in ("GET", "POST") else Problem("call", f"{method} on triggers")
            if match["trigger_op"] is None:
                return None if method in ("GET", "DELETE") else \
                    Problem("call", f"{method} on a trigger")
            return None if method == "POST" else Problem("call", f"{method} on a trigger call")
        if match["trigger"] is not None:
            return Problem("path", f"{op} takes no further path")
        if op == "export" and kind == "stack":
            return None if method == "GET" else Problem("call", f"{method} on a stack export")
        if kind not in OPERATIONS.get(op, frozenset()):
            return Problem("call", f"{op} does not apply to a {kind}")
        return None if method == "POST" else Problem("call", f"{op} needs POST, not {method}")
    match = _ACTION_PATH.fullmatch(path)
    if match is not None:
        if query:
            return Problem("path", "the call takes no query")
        if match["op"] is not None:
            return None if method == "POST" else Problem("call", f"{method} on an action {match['op']}")
        return None if method == "GET" else Problem("call", f"{method} on an action")
    return Problem("path", f"{path[:120]!r} is not a path of the Docker Cloud API")


def namespace_of(path: str) -> str | None:
    """The namespace segment of an object path (None: none, or not an object path)."""
    match = _OBJECT_PATH.fullmatch(path)
    return match["ns"] if match is not None else None


def dockercloud_policy(policy: Policy, job: ActionJob, outbound: Outbound,
                       grant: Grant | None) -> Problem | None:
    """To the REST host only; the whole path in the reference's grammar; a configured
    namespace or none; the call applies to the object's type."""
    for call in outbound.calls:
        path = rest_path(policy, call.address)
        if path is None:
            return Problem("host", "a dockercloud call goes to DOCKERCLOUD_REST_HOST only")
        problem = dockercloud_call(call.method, path, call.address.query)
        if problem is not None:
            return problem
        namespace = namespace_of(path)
        if namespace is not None and namespace not in policy.namespaces:
            known = ", ".join(sorted(policy.namespaces)) or "none known: set DOCKERCLOUD_NAMESPACE"
            return Problem("namespace", f"namespace {namespace!r} is not one eventd serves "
                                        f"({known})")
        problem = plaintext(policy, call.address, call.credentials)
        if problem is not None:
            return problem
    return None


# -- docker: the container the Engine resolved -----------------------------------------------------
_FULL_ID = re.compile(r"[0-9a-f]{64}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{12,64}")
DOCKER_CALLS = frozenset({"restart", "start", "stop", "kill", "pause", "unpause"})


def names_container(literal: str, full_id: str, name: str) -> bool:
    """Whether `literal` (a rule's target, eventd's own container) denotes this container."""
    literal = literal.strip().lstrip("/")
    return bool(literal) and (literal == name or literal == full_id
                              or (_HEX_PREFIX.fullmatch(literal) is not None
                                  and full_id.startswith(literal)))


def docker_policy(policy: Policy, job: ActionJob, outbound: Outbound,
                  grant: Grant | None) -> Problem | None:
    """The resolved container is the event's own (Engine events only) or one the rule names
    literally; never eventd's own."""
    name = str(outbound.facts.get("name", ""))
    for call in outbound.calls:
        full_id = call.address.path
        if call.address.scheme != "docker" or not _FULL_ID.fullmatch(full_id):
            return Problem("container", "a docker call names a container by its full id")
        if call.method not in DOCKER_CALLS:
            return Problem("call", f"{call.method[:40]!r} is not a docker call")
        if policy.own_container and names_container(policy.own_container, full_id, name):
            return Problem("self", f"container {name or full_id[:12]} is eventd's own")
        event = job.event
        if policy.engine_events and event.get("type") == "container" \
                and event.get("id") == full_id:
            continue
        literal = grant.literals.get("target") if grant is not None else None
        if isinstance(literal, str) and literal == outbound.facts.get("requested") \
                and names_container(literal, full_id, name):
            continue
        return Problem("container", f"container {name or '?'} ({full_id[:12]}) is neither the "
                                    f"event's own container nor one rule {job.rule} names")
    return None


# -- local: audit files and log lines --------------------------------------------------------------
def local_policy(policy: Policy, job: ActionJob, outbound: Outbound,
                 grant: Grant | None) -> Problem | None:
    """Nothing leaves the machine: a file the rule names, or the log."""
    for call in outbound.calls:
        if call.address.scheme not in ("file", "log") or call.address.host:
            return Problem("policy", "a local action writes a file or a log line only")
    return None


# -- postgres: a database server, its host against --allow-host ------------------------------------
_DATABASE_PATH = re.compile(r"/[^/]+/[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?")


def postgres_policy(policy: Policy, job: ActionJob, outbound: Outbound,
                    grant: Grant | None) -> Problem | None:
    """An allowed host; a password never in clear to another machine (sslmode require or
    stronger, unless --allow-plaintext)."""
    for call in outbound.calls:
        address = call.address
        if address.scheme != "postgresql" or not _DATABASE_PATH.fullmatch(address.path):
            return Problem("url", "a postgres write names a server, a database and a table")
        if not host_allowed(policy, address.host):
            return Problem("host", f"host {address.host!r} is not allowed by --allow-host "
                                   f"({', '.join(policy.allow_hosts)})")
        if call.credentials and not address.loopback and not policy.allow_plaintext \
                and outbound.facts.get("sslmode") not in ("require", "verify-ca", "verify-full"):
            return Problem("plaintext", f"the password would go in clear to {address.host}:"
                                        f"{address.port} (add ?sslmode=verify-full to the DSN, or "
                                        "--allow-plaintext if that is intended)")
    return None


# -- bus: a message broker (nats, mqtt, amqp), its host against --allow-host ------------------------
#: the schemes of each bus kind, and which of them are TLS
BUS_SCHEMES: dict[str, tuple[str, ...]] = {"nats": ("nats", "tls"), "mqtt": ("mqtt", "mqtts"),
                                           "amqp": ("amqp", "amqps")}
BUS_TLS = frozenset({"tls", "mqtts", "amqps"})


def bus_policy(policy: Policy, job: ActionJob, outbound: Outbound,
               grant: Grant | None) -> Problem | None:
    """A scheme of the kind's, an allowed host, a subject or topic; credentials never in
    clear to another machine (a TLS scheme, unless --allow-plaintext)."""
    for call in outbound.calls:
        address = call.address
        if address.scheme not in BUS_SCHEMES.get(outbound.kind, ()) or not address.path:
            return Problem("url", f"a {outbound.kind} publish names a {outbound.kind} server and "
                                  "where on it")
        if not host_allowed(policy, address.host):
            return Problem("host", f"host {address.host!r} is not allowed by --allow-host "
                                   f"({', '.join(policy.allow_hosts)})")
        if call.credentials and address.scheme not in BUS_TLS and not address.loopback \
                and not policy.allow_plaintext:
            return Problem("plaintext", f"credentials would go in clear to {address.origin} "
                                        f"(use {'/'.join(sorted(BUS_TLS))}://, or "
                                        "--allow-plaintext if that is intended)")
    return None


POLICIES: dict[str, Check] = {
    "http": http_policy,
    "dockercloud": dockercloud_policy,
    "docker": docker_policy,
    "local": local_policy,
    "postgres": postgres_policy,
    "bus": bus_policy,
}


# -- eventd's own container ------------------------------------------------------------------------
_CGROUP_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")
_MOUNT_ID = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)\b")


def own_container_id(proc: Path = Path("/proc/self"), hostname: str | None = None) -> str | None:
    """eventd's own container id, as the Engine names it, or None outside a container.

    cgroup v1 (and v2 without a cgroup namespace) names it in /proc/self/cgroup
    (`/docker/<id>`, `docker-<id>.scope`, `/kubepods/.../<id>`); with a private cgroup
    namespace, the files Docker mounts (`/var/lib/docker/containers/<id>/hostname`) name it in
    mountinfo. Failing both, a 12-hex host name is the id's prefix (Docker's default).
    """
    for name, pattern in (("cgroup", _CGROUP_ID), ("mountinfo", _MOUNT_ID)):
        try:
            text = (proc / name).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = pattern.search(line.rstrip())
            if match:
                return match.group(1)
    host = socket.gethostname() if hostname is None else hostname
    return host if re.fullmatch(r"[0-9a-f]{12}", host) else None
