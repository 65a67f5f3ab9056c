"""What tests read back from the brokers, with the brokers' own clients (not eventd's code)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def nats_stream(url: str, subjects: list[str] | None = None,
                duplicate_window: float = 120.0) -> tuple[str, str]:
    """A JetStream stream of this test's own; (its name, its subject prefix)."""
    import nats
    from nats.js.api import StreamConfig

    name = f"T{secrets.token_hex(5).upper()}"
    prefix = f"t{name.lower()}"

    async def make() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(StreamConfig(
                name=name, subjects=subjects or [f"{prefix}.>"],
                duplicate_window=duplicate_window))
        finally:
            await nc.close()

    _run(make())
    return name, prefix


def nats_delete(url: str, name: str) -> None:
    import nats

    async def delete() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(name)
        except Exception:  # noqa: BLE001 - already gone
            pass
        finally:
            await nc.close()

    _run(delete())


def nats_count(url: str, name: str) -> int:
    """How many messages the stream holds (its de-duplicated view)."""
    import nats

    async def count() -> int:
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
        try:
            return int((await nc.jetstream().stream_info(name)).state.messages)
        finally:
            await nc.close()

    try:
        return _run(count())
    except Exception:  # noqa: BLE001 - the server is down right now
        return -1


def nats_messages(url: str, name: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message of the stream, in order: (subject, headers, data)."""
    import nats

    async def read() -> list[tuple[str, dict[str, str], bytes]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            total = (await js.stream_info(name)).state.messages
            sub = await js.pull_subscribe("", stream=name)
            found: list[tuple[str, dict[str, str], bytes]] = []
            while len(found) < total:
                for msg in await sub.fetch(min(500, total - len(found)), timeout=10):
                    await msg.ack()
                    found.append((msg.subject, dict(msg.headers or {}), msg.data))
            return found
        finally:
            await nc.close()

    return _run(read())


class MqttCollector:
    """A subscriber (paho-mqtt, MQTT 5, QoS 2) that keeps what arrives on a topic filter:
    (topic, payload, user properties, retain)."""

    def __init__(self, url: str, topic_filter: str, session: str | None = None) -> None:
        """`session`: a client id whose session the broker keeps while it is away (and across
        the broker's restart when it persists), so that nothing published meanwhile is missed."""
        import threading

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        host, _, port = url.partition("://")[2].rpartition(":")
        self.messages: list[tuple[str, bytes, dict[str, str], bool]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=session or f"collector-{secrets.token_hex(4)}",
                                  protocol=paho.MQTTv5)

        def on_connect(client: Any, _u: Any, flags: Any, _r: Any, _p: Any) -> None:
            if not flags.session_present:
                client.subscribe(topic_filter, qos=2)
            else:
                subscribed.set()

        def on_subscribe(*_: Any) -> None:
            subscribed.set()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            props = dict(getattr(msg.properties, "UserProperty", []) or [])
            with self._lock:
                self.messages.append((msg.topic, msg.payload, props, bool(msg.retain)))

        self.client.on_connect, self.client.on_message = on_connect, on_message
        self.client.on_subscribe = on_subscribe
        properties = None
        if session:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect(host, int(port), clean_start=not session, properties=properties)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("the MQTT collector did not subscribe")

    def ids(self) -> list[str]:
        with self._lock:
            return [props.get("eventd-id", "") for _, _, props, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def amqp_queue(url: str, exchange: str = "", key: str = "") -> str:
    """A durable queue of this test's own (bound to `exchange` with `key` if given); its name."""
    import aio_pika

    name = f"t-{secrets.token_hex(5)}"

    async def make() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            if exchange:
                await channel.declare_exchange(exchange, aio_pika.ExchangeType.DIRECT,
                                               durable=False, auto_delete=False)
            queue = await channel.declare_queue(name, durable=True)
            if exchange:
                await queue.bind(exchange, key)

    _run(make())
    return name


def amqp_drain(url: str, queue: str, delete: bool = False) -> list[tuple[str, bytes, bool]]:
    """Every message in the queue, taken off it: (message_id, body, persistent)."""
    import aio_pika

    async def drain() -> list[tuple[str, bytes, bool]]:
        found = []
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            q = await channel.get_queue(queue)
            while True:
                message = await q.get(no_ack=True, fail=False)
                if message is None:
                    break
                found.append((message.message_id or "", message.body,
                              message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT))
            if delete:
                await q.delete(if_unused=False, if_empty=False)
        return found

    return _run(drain())


def amqp_delete(url: str, exchange: str = "", queue: str = "") -> None:
    import aio_pika

    async def delete() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            if queue:
                await channel.queue_delete(queue)
            if exchange:
                await channel.exchange_delete(exchange)

    _run(delete())


def amqp_count(url: str, queue: str) -> int:
    """How many messages the queue holds now (a passive declare)."""
    import aio_pika

    async def count() -> int:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            q = await channel.declare_queue(queue, passive=True)
            return int(q.declaration_result.message_count or 0)

    return _run(count())
