"""The `mqtt` action: publish to a templated topic at QoS 1 (or 2), with `retain` and MQTT 5
user properties; a job is done when the broker acknowledges it (PUBACK, or PUBCOMP at QoS 2).

Every message carries the user property `eventd-id: <job id>`: MQTT brokers keep no
de-duplication window, so a subscriber that must see each event once drops the ids it has
seen (a retry after a lost PUBACK is published again). One paho-mqtt client, one session,
per queue (server), whose network the queue's worker drives itself (paho's external loop,
no thread of paho's): it publishes a round and reads its acknowledgements. The broker's
CONNACK says its Maximum Packet Size and Receive Maximum: a message over the first is a dead
letter with the reason (a broker disconnects a client that sends one), the second bounds what
is in flight.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from eventd.actions.base import ActionContext
from eventd.actions.bus import BATCH, COMMON_OPTIONS, Broker, BusAction, Held, over_limit
from eventd.errors import ActionError, PermanentActionError, RetryableActionError
from eventd.outbound import Outbound
from eventd.records import ActionJob

if TYPE_CHECKING:
    import paho.mqtt.client as paho

logger = logging.getLogger(__name__)

ID_PROPERTY = "eventd-id"
SAFE_INFLIGHT = 20  # in flight before the broker has said its Receive Maximum (Mosquitto's)
MAX_TOPIC = 65535
#: what a topic should not hold (MQTT 5, 4.7.3): control characters
_CONTROL = frozenset(chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)))


def topic_problems(topic: str) -> list[str]:
    """Why a topic cannot be published to: empty, wildcards, control characters, a `$` topic
    the broker keeps for itself ($SYS)."""
    if not topic:
        return ["topic is empty"]
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC:
        return [f"topic is longer than {MAX_TOPIC} bytes"]
    if "+" in topic or "#" in topic:
        return [f"topic {topic[:80]!r} holds a wildcard (+ or #): one publishes to one topic"]
    if any(char in _CONTROL for char in topic):
        return [f"topic {topic[:80]!r} holds a control character or NUL"]
    if topic.startswith("$"):
        return [f"topic {topic[:80]!r} is one the broker keeps for itself ($...)"]
    return []


@dataclass
class _Session:
    """A queue's client and what its callbacks report (CONNACK, PUBACKs, a loss); paho's
    network is driven by the queue's one worker thread (`pump`), so no lock."""

    client: paho.Client
    connected: bool = False
    refused: str = ""
    lost: str = ""
    max_packet: int = 268_435_460
    receive: int = 0  # the broker's Receive Maximum (capped at a batch)
    acks: dict[int, int] = field(default_factory=dict)  # mid -> reason code value


class MqttAction(BusAction):
    """Publish a message per job to an MQTT topic."""

    name: ClassVar[str] = "mqtt"
    schemes: ClassVar[tuple[str, ...]] = ("mqtt", "mqtts")
    tls_schemes: ClassVar[tuple[str, ...]] = ("mqtts",)
    where_option: ClassVar[str] = "topic"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["url", "topic"],
        "additionalProperties": False,
        "properties": {
            **COMMON_OPTIONS,
            "topic": {"type": "string", "minLength": 1,
                      "description": "where to publish (a template); no wildcard"},
            "qos": {"enum": [1, 2], "default": 1},
            "retain": {"type": "boolean", "default": False},
            "properties": {"type": "object", "additionalProperties": {"type": "string"},
                           "description": "MQTT 5 user properties (templates); eventd-id is "
                                          "the job's id"},
            "inflight": {"type": "integer", "minimum": 1, "maximum": 256,
                         "description": "messages sent before their acknowledgements are "
                                        "awaited (default and at most: the broker's Receive "
                                        "Maximum)"},
            "client_id": {"type": "string", "minLength": 1, "maxLength": 64,
                          "description": "the session's client id (default: from the host "
                                         "name and the server)"},
        },
    }

    def __init__(self, context: ActionContext) -> None:
        super().__init__(context)
        self._held: Held[_Session] = Held(self._close_session)
        self._inflight: dict[str, int] = {}  # target -> the broker's Receive Maximum

    @classmethod
    def path_problems(cls, value: str) -> list[str]:
        return topic_problems(value)

    def prepare(self, job: ActionJob) -> Outbound:
        """The publish: the server, the rendered topic, user properties with eventd-id."""
        options = job.options
        broker = self.broker(options)
        properties = [(k, v) for k, v in self.headers(options, "properties", "property")
                      if k != ID_PROPERTY]
        properties.append((ID_PROPERTY, job.id))
        qos = options.get("qos", 1)
        if qos not in (1, 2):
            raise PermanentActionError("mqtt: qos must be 1 or 2")
        topic = str(options.get("topic", ""))
        try:  # a lone surrogate from event data can never be sent: a dead letter, not a retry
            for text in (topic, *(part for pair in properties for part in pair)):
                text.encode("utf-8")
        except UnicodeEncodeError:
            raise PermanentActionError("mqtt: the topic or a property is not valid UTF-8") \
                from None
        return self.outbound(broker, topic, self.body(job), tuple(properties), qos=str(qos),
                             retain="yes" if options.get("retain") else "no")

    def send_batch(self, items: list[tuple[ActionJob, Outbound]]) -> list[str | ActionError]:
        """Publish the items in rounds of the broker's Receive Maximum (or `inflight`),
        each round's acknowledgements awaited before the next (beyond it paho would queue
        them and send them from its network thread as acknowledgements come); each item's
        outcome."""
        job, first = items[0]
        broker = self.same_broker(job, first)
        timeout = self.timeout(job.options)
        session = self._session(job, broker, timeout)
        results: list[str | ActionError | None] = [None] * len(items)
        step = max(1, min(int(job.options.get("inflight") or BATCH),
                          session.receive or SAFE_INFLIGHT))
        for at in range(0, len(items), step):
            if not self._round(job, broker, session, items, at, at + step, results, timeout):
                for index in range(at + step, len(items)):
                    results[index] = RetryableActionError(
                        f"mqtt {broker.where}: {session.lost or 'the session was lost'}")
                break
        return [r if r is not None else RetryableActionError("mqtt: not published")
                for r in results]

    def _round(self, job: ActionJob, broker: Broker, session: _Session,
               items: list[tuple[ActionJob, Outbound]], start: int, end: int,
               results: list[str | ActionError | None], timeout: float) -> bool:
        """Publish items[start:end] and wait for their acknowledgements; False if the session
        failed (it is dropped: the next attempt makes a new one)."""
        packed = _packed_type()
        waiting: dict[int, int] = {}  # mid -> index
        quick_ack(session.client)
        for index in range(start, min(end, len(items))):
            outbound = items[index][1]
            call = outbound.calls[0]
            topic, body = call.address.path, call.body or b""
            size = _packet_size(topic, body, call.headers)
            if size > session.max_packet:
                results[index] = over_limit(size, session.max_packet, "Maximum Packet Size")
                continue
            info = session.client.publish(topic, body, qos=int(outbound.facts.get("qos", 1)),
                                          retain=outbound.facts.get("retain") == "yes",
                                          properties=packed(call.headers))
            if info.rc != 0:
                self._held.drop(job.target)
                results[index] = RetryableActionError(
                    f"mqtt {broker.where}: publish failed ({_error(info.rc)})")
                session.lost = session.lost or "publish failed"
                break
            waiting[info.mid] = index
        deadline = time.monotonic() + timeout
        client, acked = session.client, session.acks
        while not session.lost and not all(mid in acked for mid in waiting):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            rc = pump(client, min(left, 0.5))  # read the PUBACKs, write, keepalive
            quick_ack(client)  # the kernel resets it: again after each read
            if rc != 0 and not session.lost:
                session.lost = f"connection lost ({_error(rc)})"
        acks, lost = {mid: acked.pop(mid, None) for mid in waiting}, session.lost
        failed = bool(lost)
        for mid, index in waiting.items():
            code = acks.get(mid)
            if code is None:
                failed = True
                results[index] = RetryableActionError(
                    f"mqtt {broker.where}: {lost or f'no acknowledgement within {timeout:g} s'}")
            elif code >= 0x80:
                results[index] = PermanentActionError(
                    f"mqtt {broker.where}: the broker refused it ({_reason(code)})")
            else:
                results[index] = f"published to {items[index][1].calls[0].address.path[:120]}"
        if failed:
            self._held.drop(job.target)
        return not failed

    def _session(self, job: ActionJob, broker: Broker, timeout: float) -> _Session:
        """The queue's connected session, made (and waited for) if it has none."""
        session = self._held.get(job.target, broker)
        if session is not None and session.connected and not session.lost:
            # Between batches nobody reads the socket: what came meanwhile (the broker gone,
            # a keepalive due) is read now, without waiting.
            rc = pump(session.client, 0.0)
            if rc == 0 and not session.lost:
                return session
        if session is not None:
            self._held.drop(job.target)
        inflight = self._inflight.get(job.target, SAFE_INFLIGHT)
        session = self._connect(job, broker, timeout, inflight)
        if session.receive != inflight:  # paho sets it before connecting only: once more
            self._close_session(session)
            if len(self._inflight) < 256:
                self._inflight[job.target] = session.receive
            session = self._connect(job, broker, timeout, session.receive)
        self._held.put(job.target, broker, session)
        return session

    def _connect(self, job: ActionJob, broker: Broker, timeout: float,
                 inflight: int) -> _Session:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        client_id = str(job.options.get("client_id") or "eventd-" + hashlib.sha256(
            f"{socket.gethostname()} {job.target}".encode()).hexdigest()[:16])
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=paho.MQTTv5)
        session = _Session(client)
        client.enable_logger(logging.getLogger(__name__ + ".paho"))  # paho's own: DEBUG only
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(inflight)  # the broker's Receive Maximum

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, properties: Any) -> None:
            if reason.is_failure:
                session.refused = str(reason)
                return
            session.connected = True
            packet = getattr(properties, "MaximumPacketSize", None)
            if packet:
                session.max_packet = int(packet)
            receive = getattr(properties, "ReceiveMaximum", None) or 65535
            session.receive = max(1, min(int(receive), BATCH))

        def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            session.lost = session.lost or f"disconnected ({reason})"

        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
            session.acks[mid] = int(getattr(reason, "value", 0))

        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_publish = on_publish
        if broker.user is not None:
            client.username_pw_set(broker.user, broker.password)
        if broker.address.scheme == "mqtts":
            client.tls_set_context(self.tls_context())
        client.connect_timeout = timeout
        try:
            client.connect(broker.address.host, broker.address.port, keepalive=60,
                           clean_start=True)
        except (OSError, ValueError) as exc:
            raise RetryableActionError(f"mqtt {broker.where}: connection failed "
                                       f"({type(exc).__name__})") from None
        deadline = time.monotonic() + timeout
        while not (session.connected or session.refused or session.lost):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            rc = pump(client, min(left, 0.5))
            if rc != 0:
                session.lost = session.lost or f"connection lost ({_error(rc)})"
        if not session.connected:
            self._close_session(session)
            why = session.refused or session.lost or f"no CONNACK within {timeout:g} s"
            raise RetryableActionError(f"mqtt {broker.where}: {why}")
        return session

    @staticmethod
    def _close_session(session: _Session) -> None:
        try:
            session.client.disconnect()  # written at once: no network thread to hand it to
        except (OSError, ValueError):  # a dead socket: closed anyway
            pass
        sock = session.client.socket()  # a socket the DISCONNECT could not be written to
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        """Close the sessions."""
        self._held.close()


def pump(client: Any, timeout: float) -> int:
    """One turn of the session's network, in the caller's thread (paho's external loop):
    wait up to `timeout` for the socket, read what came, write what waits, keepalive; paho's
    error code (0: fine). Without paho's own thread there is no wake-up pipe to write to at
    each publish, and no second thread to hand the GIL to for each PUBACK."""
    sock = client.socket()
    if sock is None:
        return 4  # MQTT_ERR_NO_CONN
    poller = select.poll()
    poller.register(sock, select.POLLIN | (select.POLLOUT if client.want_write() else 0))
    pending = sock.pending() if hasattr(sock, "pending") else 0  # TLS: already decrypted
    ready = 0
    for _, mask in poller.poll(0 if pending else int(timeout * 1000)):
        ready |= mask
    rc = 0
    if pending or ready & (select.POLLIN | select.POLLERR | select.POLLHUP):
        rc = int(client.loop_read())
    if rc == 0 and client.want_write():
        rc = int(client.loop_write())
    if rc == 0:
        rc = int(client.loop_misc())
    return rc


@functools.cache
def _packed_type() -> Callable[[tuple[tuple[str, str], ...]], Any]:
    """PUBLISH properties packed by eventd: only user properties, encoded once (MQTT 5,
    2.2.2.2: identifier 38, then two length-prefixed UTF-8 strings each). paho's own
    Properties spend as much building and packing them as the rest of a publish; paho reads
    nothing of a PUBLISH's properties but `pack()` (and `str()` in its debug log)."""
    from paho.mqtt.properties import Properties

    class Packed(Properties):
        pairs: tuple[tuple[str, str], ...]
        packed: bytes

        def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:  # noqa: D107
            body = b"".join(b"\x26" + _utf8(name) + _utf8(value) for name, value in pairs)
            object.__setattr__(self, "pairs", pairs)
            object.__setattr__(self, "packed", _encode_varint(len(body)) + body)

        def pack(self) -> bytes:
            return self.packed

        def __str__(self) -> str:
            return str({"UserProperty": list(self.pairs)})

        __repr__ = __str__

    return Packed


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def _encode_varint(value: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def quick_ack(client: Any) -> None:
    """Acknowledge the broker's segments at once (Linux TCP_QUICKACK). Mosquitto, unless
    `set_tcp_nodelay true`, holds a round's further PUBACKs (Nagle) until its first is
    acknowledged, and a delayed ACK would make that about 40 ms a round."""
    option = getattr(socket, "TCP_QUICKACK", None)
    sock = client.socket()
    if option is None or sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)
    except (OSError, AttributeError, ValueError):  # a TLS socket may refuse: slower only
        pass


def _packet_size(topic: str, body: bytes, properties: tuple[tuple[str, str], ...]) -> int:
    """The PUBLISH packet's size on the wire, as the broker's Maximum Packet Size counts: the
    fixed header, topic, packet id, the user properties (each an identifier byte and two
    length-prefixed strings) and the payload."""
    props = sum(5 + len(k.encode()) + len(v.encode()) for k, v in properties)
    remaining = 2 + len(topic.encode()) + 2 + _varint(props) + props + len(body)
    return 1 + _varint(remaining) + remaining


def _varint(value: int) -> int:
    """How many bytes MQTT's variable byte integer takes for `value`."""
    return next(n for n, top in enumerate((128, 16384, 2097152, 268435456), 1) if value < top)


def _reason(code: int) -> str:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    try:
        return f"{ReasonCode(PacketTypes.PUBACK, identifier=code)} 0x{code:02x}"
    except Exception:  # noqa: BLE001 - a code paho does not name
        return f"reason code 0x{code:02x}"


def _error(rc: int) -> str:
    import paho.mqtt.client as paho

    return str(paho.error_string(rc))


__all__ = ["ID_PROPERTY", "MqttAction", "topic_problems"]
