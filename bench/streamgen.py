"""Docker Cloud-shaped events as pre-encoded, unmasked websocket text frames; 1M in a few seconds.

The blaster must out-run every client, so frames are built before the clock starts: a few
thousand template events (mixed types, realistic states and parents) are JSON-encoded once with
a placeholder uuid, and each event of the stream is a copy of a template with a fresh random
uuid4 patched into that slot (about 1 µs per event instead of ~8 µs for uuid4() + json.dumps).
"""

from __future__ import annotations

import binascii
import itertools
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any

NAMESPACE = "bench"
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"

#: (type, weight, states, actions): the stream's mix. States are the documented vocabularies
#: minus a few that rules use as "never seen" (node Upgrading, container Init).
TYPES: tuple[tuple[str, int, tuple[str, ...], tuple[str, ...]], ...] = (
    ("container", 36, ("Starting", "Running", "Stopping", "Stopped", "Terminating", "Terminated"),
     ("create", "update", "update", "update", "delete")),
    ("service", 20, ("Not running", "Starting", "Running", "Partly running", "Scaling",
                     "Redeploying", "Stopping", "Stopped", "Terminating", "Terminated"),
     ("create", "update", "update", "delete")),
    ("action", 24, ("Pending", "In progress", "Success", "Success", "Failed"),
     ("create", "update", "update")),
    ("stack", 10, ("Not Running", "Starting", "Running", "Partly running", "Stopping", "Stopped",
                  "Redeploying", "Terminating", "Terminated"), ("create", "update", "delete")),
    ("node", 7, ("Deploying", "Deployed", "Unreachable", "Terminating", "Terminated"),
     ("create", "update", "delete")),
    ("nodecluster", 3, ("Init", "Deploying", "Deployed", "Partly deployed", "Scaling",
                        "Terminating", "Terminated", "Empty cluster"), ("create", "update")),
)

_APP = f"/api/app/v1/{NAMESPACE}"
_INFRA = f"/api/infra/v1/{NAMESPACE}"


@dataclass(frozen=True)
class World:
    """Object URIs the events refer to, so parents and resource URIs repeat as in a real account."""

    clusters: list[str]
    nodes: list[tuple[str, str]]  # (node uri, its cluster uri)
    stacks: list[str]
    services: list[tuple[str, str]]  # (service uri, its stack uri)
    containers: list[tuple[str, str, str, str, str]]  # (uri, service, stack, node, cluster)


def _uri(rng: random.Random, base: str, kind: str) -> str:
    u = "%032x" % rng.getrandbits(128)
    return f"{base}/{kind}/{u[:8]}-{u[8:12]}-4{u[13:16]}-a{u[17:20]}-{u[20:32]}/"


def build_world(rng: random.Random) -> World:
    """A plausible account: 3 clusters, 24 nodes, 40 stacks, 200 services, 1,500 containers."""
    clusters = [_uri(rng, _INFRA, "nodecluster") for _ in range(3)]
    nodes = [(_uri(rng, _INFRA, "node"), rng.choice(clusters)) for _ in range(24)]
    stacks = [_uri(rng, _APP, "stack") for _ in range(40)]
    services = [(_uri(rng, _APP, "service"), rng.choice(stacks)) for _ in range(200)]
    containers = []
    for _ in range(1500):
        service, stack = rng.choice(services)
        node, cluster = rng.choice(nodes)
        containers.append((_uri(rng, _APP, "container"), service, stack, node, cluster))
    return World(clusters, nodes, stacks, services, containers)


def make_event(rng: random.Random, world: World, kind: str, states: tuple[str, ...],
               actions: tuple[str, ...], when: float) -> dict[str, Any]:
    """One event dict in the documented field order, uuid left as the placeholder."""
    parents: list[str]
    if kind == "container":
        uri, service, stack, node, cluster = rng.choice(world.containers)
        parents = rng.choice(([service, stack, node, cluster], [service, stack, node, cluster],
                              [service, stack], [service, node], [service]))
    elif kind == "service":
        uri, stack = rng.choice(world.services)
        parents = [stack] if rng.random() < 0.9 else []
    elif kind == "stack":
        uri, parents = rng.choice(world.stacks), []
    elif kind == "node":
        uri, cluster = rng.choice(world.nodes)
        parents = [cluster]
    elif kind == "nodecluster":
        uri, parents = rng.choice(world.clusters), []
    else:  # action: its parent is the object acted on, its URI is not namespaced
        target = rng.choice(world.services)[0] if rng.random() < 0.6 \
            else rng.choice(world.containers)[0]
        uri, parents = _uri(rng, "/api/audit/v1", "action"), [target]
    return {
        "type": kind,
        "action": rng.choice(actions),
        "parents": parents,
        "resource_uri": uri,
        "state": rng.choice(states),
        "uuid": PLACEHOLDER,
        "datetime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
    }


def frame_header(length: int) -> bytes:
    """The header of an unmasked, final text frame (server to client) of `length` bytes."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


def text_frame(payload: bytes) -> bytes:
    """A whole unmasked text frame."""
    return frame_header(len(payload)) + payload


CLOSE_FRAME = bytes((0x88, 2)) + (1000).to_bytes(2, "big")


@dataclass(frozen=True)
class Stream:
    """N pre-encoded frames in one buffer, with each frame's end offset (for drop points)."""

    data: bytearray
    ends: list[int]

    @property
    def events(self) -> int:
        return len(self.ends)

    def offset(self, index: int) -> int:
        """Byte offset where event `index` starts."""
        return 0 if index <= 0 else self.ends[index - 1]


def templates(seed: int, count: int = 3000) -> list[dict[str, Any]]:
    """`count` template events with the stream's type mix."""
    rng = random.Random(seed)
    world = build_world(rng)
    kinds = [t for t in TYPES]
    weights = [t[1] for t in TYPES]
    now = time.time()
    out = []
    for i in range(count):
        kind, _, states, actions = rng.choices(kinds, weights)[0]
        out.append(make_event(rng, world, kind, states, actions, now - count + i))
    return out


def encode(event: dict[str, Any]) -> bytes:
    """Compact JSON, as a server would send it."""
    return json.dumps(event, separators=(",", ":")).encode()


def _uuid4s(n: int) -> bytes:
    """n random uuid4 strings (36 bytes each, concatenated)."""
    out = bytearray(PLACEHOLDER.encode() * n)
    _patch_uuids(out, [36 * i for i in range(n)])
    return bytes(out)


def _patch_uuids(data: bytearray, starts: list[int]) -> None:
    """Overwrite the hex digits of the placeholder uuid at each start with random ones.

    The dashes, the version nibble (4) and the variant nibble (8) stay from the placeholder.
    """
    hexed = memoryview(binascii.hexlify(os.urandom(15 * len(starts))))
    h = 0
    for s in starts:
        data[s:s + 8] = hexed[h:h + 8]
        data[s + 9:s + 13] = hexed[h + 8:h + 12]
        data[s + 15:s + 18] = hexed[h + 12:h + 15]
        data[s + 20:s + 23] = hexed[h + 15:h + 18]
        data[s + 24:s + 36] = hexed[h + 18:h + 30]
        h += 30


def build_stream(n: int, seed: int = 1) -> Stream:
    """n frames, each a random template with its own uuid4."""
    rng = random.Random(seed)
    frames = []
    slots = []
    for event in templates(seed):
        frame = text_frame(encode(event))
        frames.append(frame)
        slots.append(frame.index(PLACEHOLDER.encode()))
    picks = rng.choices(range(len(frames)), k=n)
    data = bytearray(b"".join([frames[p] for p in picks]))
    ends = list(itertools.accumulate([len(frames[p]) for p in picks]))
    starts = [end - len(frames[p]) + slots[p] for end, p in zip(ends, picks, strict=True)]
    _patch_uuids(data, starts)
    return Stream(data, ends)


class LiveEvents:
    """Events for the rate mode: encoded at send time so they carry `bench_sent`."""

    def __init__(self, seed: int = 1) -> None:
        self._templates = templates(seed)
        self._rng = random.Random(seed)

    def frame(self) -> tuple[bytes, str]:
        """The next frame, stamped with its send time (time.time()) and a fresh uuid; its type."""
        event = dict(self._rng.choice(self._templates))
        event["uuid"] = _uuid4s(1).decode()
        event["bench_sent"] = time.time()
        return text_frame(encode(event)), event["type"]
