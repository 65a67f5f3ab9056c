"""The `amqp` action: publish to a RabbitMQ exchange with a templated routing key, persistent,
with publisher confirms; a job is done when the broker confirms it.

`message_id` is the job's id: RabbitMQ keeps no de-duplication window, so a consumer that must
see each event once drops the ids it has seen (a retry after a confirm that was lost is
published again). `mandatory: true` asks the broker to return a message no queue takes: it
becomes a dead letter with the broker's reason (312 NO_ROUTE) instead of vanishing.

aio-pika, in the one asyncio loop thread it shares with nats (eventd.clients.aioloop): a batch
is published and its confirms awaited together. An error that closes the channel (an exchange
that does not exist, a message over the server's max_message_size) would fail the whole
batch alike, so such a batch is published again one message at a time, and only the message
at fault becomes a dead letter.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from eventd.actions.base import ActionContext
from eventd.actions.bus import COMMON_OPTIONS, DEFAULT_TIMEOUT, Broker, BusAction, Held, over_limit
from eventd.clients.aioloop import AsyncLoop, LoopTimeout, shared_loop
from eventd.errors import ActionError, ConfigError, PermanentActionError, RetryableActionError
from eventd.outbound import Outbound
from eventd.records import ActionJob

if TYPE_CHECKING:
    import aio_pika.abc

logger = logging.getLogger(__name__)

MAX_NAME = 255
_EXCHANGE = re.compile(r"[A-Za-z0-9_.:-]{0,255}")
_VHOST = re.compile(r"[^\x00-\x1f\x7f]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SIZE = re.compile(r"message size \d+ is larger than configured max size (\d+)")


def routing_key_problems(key: str) -> list[str]:
    """Why a routing key cannot be sent: longer than AMQP's 255 bytes, a control character."""
    if len(key.encode()) > MAX_NAME:
        return [f"routing_key is longer than {MAX_NAME} bytes"]
    if _CONTROL.search(key):
        return [f"routing_key {key[:80]!r} holds a control character"]
    return []


@dataclass
class _Channel:
    """A queue's connection and its confirming channel, and the exchanges named so far."""

    connection: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel
    exchanges: dict[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return not self.connection.is_closed and not self.channel.is_closed


class AmqpAction(BusAction):
    """Publish a persistent, confirmed message per job to a RabbitMQ exchange."""

    name: ClassVar[str] = "amqp"
    schemes: ClassVar[tuple[str, ...]] = ("amqp", "amqps")
    tls_schemes: ClassVar[tuple[str, ...]] = ("amqps",)
    where_option: ClassVar[str] = "routing_key"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["url", "routing_key"],
        "additionalProperties": False,
        "properties": {
            **COMMON_OPTIONS,
            "vhost": {"type": "string", "minLength": 1, "default": "/"},
            "exchange": {"type": "string", "default": "",
                         "description": "an existing exchange (no template); empty: the "
                                        "default exchange (the routing key names a queue)"},
            "routing_key": {"type": "string", "description": "a template"},
            "mandatory": {"type": "boolean", "default": False,
                          "description": "a message no queue takes is a dead letter"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "AMQP headers (templates)"},
        },
    }

    def __init__(self, context: ActionContext) -> None:
        super().__init__(context)
        self._held: Held[_Channel] = Held(self._close_channel)
        self._closing: Any = None  # the last close started from the loop (kept referenced)
        self._max_size: dict[str, int] = {}  # target -> the max_message_size the server said

    @property
    def _loop(self) -> AsyncLoop:
        """The shared asyncio thread, started by the first message this kind sends."""
        return shared_loop()

    @classmethod
    def path_problems(cls, value: str) -> list[str]:
        return routing_key_problems(value)

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """What every bus kind checks, and a plain exchange and vhost name."""
        problems = super().validate(options)
        exchange = options.get("exchange", "")
        if not isinstance(exchange, str) or not _EXCHANGE.fullmatch(exchange):
            problems.append("exchange must be a plain name (letters, digits, - _ . :), "
                            "without a template")
        vhost = options.get("vhost", "/")
        if not isinstance(vhost, str) or not _VHOST.fullmatch(vhost) or "{{" in vhost:
            problems.append("vhost must be a name without a template or control character")
        return problems

    def target(self, options: dict[str, Any]) -> str:
        """One queue per server and virtual host."""
        vhost = str(options.get("vhost", "/"))
        return super().target(options) + ("" if vhost == "/" else f"/{quote(vhost, safe='')}")

    def prepare(self, job: ActionJob) -> Outbound:
        """The publish: the server, exchange/routing key, headers; the vhost in the facts."""
        options = job.options
        broker = self.broker(options)
        exchange, key = str(options.get("exchange", "")), str(options.get("routing_key", ""))
        if not _EXCHANGE.fullmatch(exchange):
            raise PermanentActionError("amqp: exchange must be a plain name")
        return self.outbound(broker, f"{exchange}/{key}", self.body(job),
                             tuple(self.headers(options)), where=key,
                             vhost=str(options.get("vhost", "/")),
                             mandatory="yes" if options.get("mandatory") else "no",
                             content_type="text/plain" if "body" in options
                             else "application/json")

    def preflight(self, options_list: list[dict[str, Any]]) -> None:
        """At start: each exchange the rules name exists in its virtual host (a passive
        declare; ConfigError naming it, exit 2: every message would be a dead letter). A
        server that does not answer is not an error: eventd starts, and the messages wait in
        the spool."""
        wanted: dict[tuple[Broker, str], list[str]] = {}
        for options in options_list:
            exchange, vhost = options.get("exchange", ""), options.get("vhost", "/")
            if not isinstance(exchange, str) or not exchange or not isinstance(vhost, str) \
                    or not _EXCHANGE.fullmatch(exchange):
                continue
            try:
                broker = self.broker(options)
            except PermanentActionError as exc:
                raise ConfigError(str(exc)) from None
            names = wanted.setdefault((broker, vhost), [])
            if exchange not in names:
                names.append(exchange)
        for (broker, vhost), names in wanted.items():
            timeout = min(DEFAULT_TIMEOUT, 5.0)
            try:
                missing = self._loop.run(self._missing(broker, vhost, names, timeout),
                                         timeout * 2 + 5)
            except Exception as exc:  # noqa: BLE001 - down or slow: checked by the first publish
                logger.warning("amqp %s: %s; starting anyway: its messages wait in the spool "
                               "until it answers", broker.where, _text(exc))
                continue
            if missing:
                raise ConfigError(f"amqp {broker.where}: no exchange {missing[0]!r} in vhost "
                                  f"{vhost!r} (declare it first, or publish to the default "
                                  "exchange with exchange unset)")

    async def _missing(self, broker: Broker, vhost: str, names: list[str],
                       timeout: float) -> list[str]:
        """The exchanges that do not exist, asked over a connection of its own."""
        held = await self._connect(broker, vhost, timeout)
        missing = []
        try:
            for name in names:
                if await self._exchange(held, name) is None:
                    missing.append(name)
        finally:
            await held.connection.close()
        return missing

    def send_batch(self, items: list[tuple[ActionJob, Outbound]]) -> list[str | ActionError]:
        """Publish every item, then await the confirms; each item's outcome."""
        job, first = items[0]
        broker = self.same_broker(job, first)
        timeout = self.timeout(job.options)
        try:
            return self._loop.run(self._send(job.target, broker, items, timeout),
                                  timeout * (2 + len(items) // 32) + 5)
        except LoopTimeout:
            self._held.drop(job.target)
            raise RetryableActionError(f"amqp {broker.where}: no confirm within "
                                       f"{timeout:g} s") from None

    async def _send(self, target: str, broker: Broker, items: list[tuple[ActionJob, Outbound]],
                    timeout: float) -> list[str | ActionError]:
        """Each item's outcome; the items a closed channel failed are published again one at
        a time, so that only the message at fault is refused (the others keep their confirm
        and are not sent twice)."""
        results = await self._publish(target, broker, items, timeout)
        if len(items) > 1 and any(isinstance(r, _ChannelError) for r in results):
            for index, result in enumerate(results):
                if isinstance(result, _ChannelError):
                    results[index] = (await self._publish(target, broker, [items[index]],
                                                          timeout))[0]
        return [r.error if isinstance(r, _ChannelError) else r for r in results]

    async def _publish(self, target: str, broker: Broker,
                       items: list[tuple[ActionJob, Outbound]],
                       timeout: float) -> list[str | ActionError]:
        """Publish the items and await their confirms; a connection that fails fails them
        all alike (retryable), a channel an item closed marks the items it failed."""
        import asyncio

        import aio_pika
        import aio_pika.exceptions

        vhost = str(items[0][1].facts.get("vhost", "/"))
        try:
            held = self._held.get(target, broker)
            if held is None or not held.usable:
                if held is not None:
                    self._held.drop(target)
                held = await self._connect(broker, vhost, timeout)
                self._held.put(target, broker, held)
            publishes = []
            early: dict[int, ActionError] = {}  # refused before publishing
            limit = self._max_size.get(target)
            for index, (job, outbound) in enumerate(items):
                call = outbound.calls[0]
                exchange_name, _, key = call.address.path.partition("/")
                exchange = await self._exchange(held, exchange_name)
                size = len(call.body or b"")
                if exchange is None:
                    early[index] = PermanentActionError(
                        f"amqp {broker.where}: no exchange {exchange_name!r} in vhost "
                        f"{vhost!r}")
                    continue
                if limit is not None and size > limit:
                    early[index] = over_limit(size, limit, "max_message_size")
                    continue
                message = aio_pika.Message(
                    call.body or b"", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=job.id, content_type=outbound.facts.get("content_type"),
                    headers=dict(call.headers) or None, app_id="eventd")
                # one timeout for the batch: a timeout per publish is a task per message
                publishes.append(exchange.publish(
                    message, key, mandatory=outbound.facts.get("mandatory") == "yes"))
            sent = iter(await asyncio.wait_for(
                asyncio.gather(*publishes, return_exceptions=True), timeout))
            answers = [early[i] if i in early else next(sent) for i in range(len(items))]
        except (aio_pika.exceptions.AMQPError, OSError, asyncio.TimeoutError) as exc:
            self._held.drop(target)
            error = RetryableActionError(f"amqp {broker.where}: {_text(exc)}")
            return [error] * len(items)
        results: list[str | ActionError] = []
        dropped = False
        for (_, outbound), answer in zip(items, answers, strict=True):
            where = outbound.calls[0].address.path
            if isinstance(answer, ActionError):
                results.append(answer)
            elif not isinstance(answer, BaseException):
                results.append(f"confirmed by {broker.where} ({where[:120]})")
            elif isinstance(answer, aio_pika.exceptions.PublishError):
                said = answer.args[0] if answer.args else "NO_ROUTE"
                results.append(PermanentActionError(
                    f"amqp {broker.where}: the broker returned it, no queue takes it "
                    f"(312 {said}; mandatory)"))
            elif isinstance(answer, aio_pika.exceptions.DeliveryError):
                results.append(RetryableActionError(f"amqp {broker.where}: the broker did "
                                                    "not confirm it (nack)"))
            elif isinstance(answer, (aio_pika.exceptions.ChannelNotFoundEntity,
                                     aio_pika.exceptions.ChannelPreconditionFailed)):
                dropped = True
                text = _text(answer)
                found = _SIZE.search(text)
                reason = f"{found.group(0)} (max_message_size)" if found else text
                if found and len(self._max_size) < 256:  # checked before sending from now on
                    self._max_size[target] = int(found.group(1))
                results.append(_ChannelError(PermanentActionError(
                    f"amqp {broker.where}: {reason}")))
            else:  # the connection's or channel's trouble: retried
                dropped = True
                results.append(RetryableActionError(f"amqp {broker.where}: {_text(answer)}"))
        if dropped:
            self._held.drop(target)
        return results

    async def _exchange(self, held: _Channel, name: str) -> Any:
        """The exchange, checked to exist the first time a channel names it (a passive
        declare: a missing one closes only that probe's channel, before anything is
        published, so that no message of the batch is sent twice); None if it does not."""
        import aio_pika.exceptions

        if not name:
            return held.channel.default_exchange
        exchange = held.exchanges.get(name)
        if exchange is None:
            try:
                exchange = await held.channel.get_exchange(name, ensure=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                held.channel = await held.connection.channel(publisher_confirms=True,
                                                             on_return_raises=True)
                held.exchanges.clear()
                return None
            if len(held.exchanges) < 256:
                held.exchanges[name] = exchange
        return exchange

    async def _connect(self, broker: Broker, vhost: str, timeout: float) -> _Channel:
        """A connection and a confirming channel; one that fails half-way is closed here (left
        to the garbage collector, aio-pika would close it from whatever thread collects it)."""
        import aio_pika
        from aio_pika.connection import make_url

        # aiormq logs a connection that went away as a WARNING with two tracebacks; eventd
        # says it in one line itself (the retry, the breaker, /readyz)
        logging.getLogger("aiormq").setLevel(logging.ERROR)
        address = broker.address
        url = make_url(host=address.host, port=address.port, virtualhost=vhost,
                       login=broker.user if broker.user is not None else "guest",
                       password=broker.password or ("guest" if broker.user is None else ""),
                       ssl=address.scheme == "amqps")
        connection = aio_pika.Connection(
            url, ssl_context=self.tls_context() if address.scheme == "amqps" else None,
            client_properties={"connection_name": "eventd"})
        try:
            await connection.connect(timeout=timeout)
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException:
            await connection.close()
            raise
        return _Channel(connection, channel)

    def _close_channel(self, held: _Channel) -> None:
        if not held.connection.is_closed:
            task = self._loop.close(held.connection.close)
            if task is not None:
                self._closing = task  # kept referenced until it runs

    def close(self) -> None:
        """Close the connections."""
        self._held.close()


class _ChannelError(RetryableActionError):
    """A closed channel failed this item: its error, final once the item went alone (the
    channel closes for every item in flight, not only the one at fault)."""

    def __init__(self, error: ActionError) -> None:
        super().__init__(str(error))
        self.error = error


def _text(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text[:240]}" if text and text != name else name


__all__ = ["AmqpAction", "routing_key_problems"]
