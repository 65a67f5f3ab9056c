"""The `nats` action: publish to a templated subject, with JetStream's PubAck when a stream
holds the subject.

Every message carries `Nats-Msg-Id: <job id>`: a stream drops a redelivery (a retry after an
acknowledgement that was lost, a restart that delivers the spool again) within its duplicate
window, so the stream holds one message per job. `jetstream: true` needs a stream (none: a
dead letter naming the subject); `false` publishes to core NATS and waits for the server to
have read the batch (PING/PONG); unset, a subject a stream holds gets JetStream, asked once
per subject and connection.

nats-py is asyncio only: its connections live in the one loop thread (eventd.clients.aioloop),
and a lane's worker hands it a whole batch: every message is published, then the PubAcks are
awaited together.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from eventd.actions.base import ActionContext
from eventd.actions.bus import (
    COMMON_OPTIONS,
    DEFAULT_TIMEOUT,
    Broker,
    BusAction,
    Held,
    is_template,
    over_limit,
)
from eventd.clients.aioloop import AsyncLoop, LoopTimeout, shared_loop
from eventd.errors import ActionError, ConfigError, PermanentActionError, RetryableActionError
from eventd.outbound import Outbound
from eventd.records import ActionJob

if TYPE_CHECKING:
    from nats.aio.client import Client

logger = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
MAX_SUBJECT = 255
MAX_STREAMS = 1024  # subjects whose stream is remembered, per connection
STREAM_TTL = 600.0  # seconds a subject's stream is remembered
NO_STREAM_TTL = 30.0  # seconds "no stream holds it" is remembered
#: a token of a subject: no wildcard, no space or control character, no `.`
_TOKEN = re.compile(r"[^\x00-\x20\x7f.*>]+")


def subject_problems(subject: str) -> list[str]:
    """Why a subject cannot be published to: empty tokens, wildcards, spaces, or a name the
    server keeps for itself (`$JS.API...` would be an API call, `_INBOX.` a reply to
    someone else)."""
    if not subject:
        return ["subject is empty"]
    if len(subject.encode()) > MAX_SUBJECT:
        return [f"subject is longer than {MAX_SUBJECT} bytes"]
    tokens = subject.split(".")
    if any(token in ("*", ">") or ("*" in token or ">" in token) for token in tokens):
        return [f"subject {subject[:80]!r} holds a wildcard (* or >): one publishes to one "
                "subject"]
    if not all(_TOKEN.fullmatch(token) for token in tokens):
        return [f"subject {subject[:80]!r} is not tokens joined by '.' (no empty token, space "
                "or control character)"]
    if subject.startswith("$") or tokens[0] == "_INBOX":
        return [f"subject {subject[:80]!r} is one the server keeps for itself ($..., _INBOX.)"]
    return []


@dataclass
class _Conn:
    """A queue's connection, its JetStream context, and the streams of the subjects seen."""

    nc: Client
    js: Any
    streams: dict[str, tuple[str | None, float]] = field(default_factory=dict)


class NatsAction(BusAction):
    """Publish a message per job to a NATS subject."""

    name: ClassVar[str] = "nats"
    schemes: ClassVar[tuple[str, ...]] = ("nats", "tls")
    tls_schemes: ClassVar[tuple[str, ...]] = ("tls",)
    where_option: ClassVar[str] = "subject"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["url", "subject"],
        "additionalProperties": False,
        "properties": {
            **COMMON_OPTIONS,
            "subject": {"type": "string", "minLength": 1,
                        "description": "where to publish (a template); no wildcard"},
            "jetstream": {"type": "boolean",
                          "description": "wait for a stream's PubAck (default: when a stream "
                                         "holds the subject)"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "name -> value (templates); Nats-Msg-Id is the job's id"},
        },
    }

    def __init__(self, context: ActionContext) -> None:
        super().__init__(context)
        self._held: Held[_Conn] = Held(self._close_conn)
        self._closing: Any = None  # the last close started from the loop (kept referenced)

    @property
    def _loop(self) -> AsyncLoop:
        """The shared asyncio thread, started by the first message this kind sends."""
        return shared_loop()

    @classmethod
    def path_problems(cls, value: str) -> list[str]:
        return subject_problems(value)

    def prepare(self, job: ActionJob) -> Outbound:
        """The publish: the server, the rendered subject, headers with Nats-Msg-Id."""
        options = job.options
        broker = self.broker(options)
        headers = [(k, v) for k, v in self.headers(options) if k.lower() != MSG_ID.lower()]
        headers.append((MSG_ID, job.id))
        jetstream = options.get("jetstream")
        mode = "auto" if jetstream is None else ("yes" if jetstream else "no")
        return self.outbound(broker, str(options.get("subject", "")), self.body(job),
                             tuple(headers), jetstream=mode)

    def preflight(self, options_list: list[dict[str, Any]]) -> None:
        """At start: a literal subject with `jetstream: true` is held by a stream (ConfigError
        naming it, exit 2: every message would be a dead letter). A server that does not
        answer is not an error: eventd starts, and the messages wait in the spool."""
        wanted: dict[Broker, list[str]] = {}
        for options in options_list:
            subject = options.get("subject")
            if options.get("jetstream") is not True or not isinstance(subject, str) \
                    or is_template(subject) or subject_problems(subject):
                continue
            try:
                broker = self.broker(options)
            except PermanentActionError as exc:
                raise ConfigError(str(exc)) from None
            subjects = wanted.setdefault(broker, [])
            if subject not in subjects:
                subjects.append(subject)
        for broker, subjects in wanted.items():
            timeout = min(DEFAULT_TIMEOUT, 5.0)
            try:
                missing = self._loop.run(self._missing(broker, subjects, timeout),
                                         timeout * 2 + 5)
            except Exception as exc:  # noqa: BLE001 - down or slow: checked by the first publish
                logger.warning("nats %s: %s; starting anyway: its messages wait in the spool "
                               "until it answers", broker.where, _text(exc))
                continue
            if missing:
                raise ConfigError(f"nats {broker.where}: jetstream is true but no stream holds "
                                  f"subject {missing[0][:80]!r} (add a stream for it, or leave "
                                  "jetstream unset to publish to core NATS)")

    async def _missing(self, broker: Broker, subjects: list[str], timeout: float) -> list[str]:
        """The subjects no stream holds, asked over a connection of its own."""
        import nats.js.errors

        conn = await self._connect(broker, timeout)
        missing = []
        try:
            for subject in subjects:
                try:
                    await conn.js.find_stream_name_by_subject(subject)
                except nats.js.errors.NotFoundError:
                    missing.append(subject)
        finally:
            await conn.nc.close()
        return missing

    def send_batch(self, items: list[tuple[ActionJob, Outbound]]) -> list[str | ActionError]:
        """Publish every item, then await their acknowledgements; each item's outcome."""
        job, first = items[0]
        broker = self.same_broker(job, first)
        timeout = self.timeout(job.options)
        try:
            return self._loop.run(self._send(job.target, broker, items, timeout),
                                  timeout * 2 + 5)
        except LoopTimeout:
            self._held.drop(job.target)
            raise RetryableActionError(f"nats {broker.where}: no acknowledgement within "
                                       f"{timeout:g} s") from None

    async def _send(self, target: str, broker: Broker, items: list[tuple[ActionJob, Outbound]],
                    timeout: float) -> list[str | ActionError]:
        import asyncio

        import nats.errors

        results: list[str | ActionError | None] = [None] * len(items)
        acks: list[tuple[int, str, asyncio.Future[Any]]] = []
        core: list[int] = []
        try:
            conn = self._held.get(target, broker)
            if conn is None or not conn.nc.is_connected:
                if conn is not None:
                    self._held.drop(target)
                conn = await self._connect(broker, timeout)
                self._held.put(target, broker, conn)
            limit = conn.nc.max_payload
            for index, (_, outbound) in enumerate(items):
                call = outbound.calls[0]
                subject, body, headers = call.address.path, call.body or b"", dict(call.headers)
                size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 12
                if size > limit:
                    results[index] = over_limit(size, limit, "max_payload")
                    continue
                try:
                    stream = await self._stream(conn, subject, outbound.facts.get("jetstream"),
                                                timeout)
                except PermanentActionError as exc:  # this subject's alone
                    results[index] = exc
                    continue
                if stream is None:
                    await conn.nc.publish(subject, body, headers=headers)
                    core.append(index)
                else:
                    # no wait_stall: with one, nats-py makes a task per message (asyncio.
                    # wait_for); a batch (256) is far below its 4,000 pending
                    future = await conn.js.publish_async(subject, body, headers=headers)
                    acks.append((index, subject, future))
            if core:
                await conn.nc.flush(max(1, int(timeout)))
                for index in core:
                    results[index] = f"published to {items[index][1].calls[0].address.path}"
            if acks:
                done, _ = await asyncio.wait([f for _, _, f in acks], timeout=timeout)
                for index, subject, future in acks:
                    if future not in done:
                        future.cancel()
                        results[index] = RetryableActionError(
                            f"nats {broker.where}: no PubAck within {timeout:g} s")
                        continue
                    error = future.exception()
                    if error is None:
                        ack = future.result()
                        results[index] = (f"in stream {ack.stream} seq {ack.seq}"
                                          + (" (a duplicate, dropped)" if ack.duplicate else ""))
                    else:
                        results[index] = self._judge(error, subject, broker)
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            self._held.drop(target)
            raise RetryableActionError(f"nats {broker.where}: {_text(exc)}") from None
        return [r if r is not None else RetryableActionError("nats: not published")
                for r in results]

    def _judge(self, error: BaseException, subject: str, broker: Broker) -> ActionError:
        """A PubAck that is an error: a stream's refusal (permanent: the message itself) or
        the server's trouble (retryable)."""
        import nats.js.errors

        if isinstance(error, nats.js.errors.NoStreamResponseError):
            return RetryableActionError(f"nats {broker.where}: no stream answered for subject "
                                        f"{subject[:80]!r}")
        if isinstance(error, nats.js.errors.APIError):
            code = error.code or 0
            text = f"nats {broker.where}: the stream refused it ({code} {error.description})"
            if code in (400, 413) or error.err_code in (10054, 10122):
                return PermanentActionError(text)
            return RetryableActionError(text)
        return RetryableActionError(f"nats {broker.where}: {_text(error)}")

    async def _stream(self, conn: _Conn, subject: str, mode: str | None,
                      timeout: float) -> str | None:
        """The stream that holds `subject` (JetStream), or None (core NATS)."""
        import nats.js.errors

        if mode == "no":
            return None
        known = conn.streams.get(subject)
        if known is not None and known[1] > time.monotonic():
            stream = known[0]
        else:
            try:
                stream = await conn.js.find_stream_name_by_subject(subject)
            except nats.js.errors.NotFoundError:
                stream = None
            if len(conn.streams) < MAX_STREAMS or subject in conn.streams:
                # "no stream" is asked again soon: a stream made later is used without a
                # reconnect
                conn.streams[subject] = (stream, time.monotonic() + (
                    STREAM_TTL if stream is not None else NO_STREAM_TTL))
        if stream is None and mode == "yes":
            conn.streams.pop(subject, None)  # a stream may be made meanwhile: ask again
            raise PermanentActionError(f"nats: jetstream is true but no stream holds subject "
                                       f"{subject[:80]!r}")
        return stream

    async def _connect(self, broker: Broker, timeout: float) -> _Conn:
        import nats

        async def quiet(*_: Any) -> None:
            """nats-py's own error callback logs a traceback; eventd logs one line itself."""

        address = broker.address
        host = f"[{address.host}]" if ":" in address.host else address.host
        kwargs: dict[str, Any] = {}
        if broker.user is not None and broker.password is None:
            kwargs["token"] = broker.user
        elif broker.user is not None:
            kwargs.update(user=broker.user, password=broker.password or "")
        if address.scheme == "tls":
            kwargs["tls"] = self.tls_context()
            kwargs["tls_hostname"] = address.host
        nc = await nats.connect(
            f"{address.scheme}://{host}:{address.port}", name="eventd",
            connect_timeout=max(1, int(timeout)), allow_reconnect=False,
            # 0 would retry the one server forever; 1 with no wait: two tries, then an error
            max_reconnect_attempts=1, reconnect_time_wait=0, error_cb=quiet,
            disconnected_cb=quiet, closed_cb=quiet, **kwargs)
        return _Conn(nc, nc.jetstream(timeout=timeout))

    def _close_conn(self, conn: _Conn) -> None:
        if not conn.nc.is_closed:
            task = self._loop.close(conn.nc.close)
            if task is not None:
                self._closing = task  # kept referenced until it runs

    def close(self) -> None:
        """Close the connections."""
        self._held.close()


def _text(exc: BaseException) -> str:
    """An error as a short sentence (nats-py's often have an empty str())."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text[:200]}" if text and text != name else name


__all__ = ["MSG_ID", "NatsAction", "subject_problems"]
