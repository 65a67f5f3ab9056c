"""What the message-bus kinds (`nats`, `mqtt`, `amqp`) share, so that each adds only its
client: the broker URL parsed once by the gate's parser, its password from the URL or
`password_file`, the message (the event and the rule's decision unless `json` or `body` says),
the Outbound under the gate's `bus` policy, one queue per server, batches, and one connection
per queue.

The URL never holds a template (a queue and a gate check per server); the subject, topic or
routing key may, and is checked again once rendered. The password is never part of a queue
name, a description, an error or a log line.
"""

from __future__ import annotations

import datetime as _dt
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from eventd.actions.base import ActionContext, json_message, utf8_message
from eventd.errors import ActionError, ConfigError, PermanentActionError
from eventd.outbound import Address, BadAddress, Call, Outbound, parse_url
from eventd.records import ActionJob

if TYPE_CHECKING:
    import ssl

BATCH = 256  # most messages published before their acknowledgements are awaited together
DEFAULT_TIMEOUT = 10.0
MAX_BROKERS = 64  # distinct URLs remembered (rules name them literally: few)
_UTC = _dt.timezone.utc
#: a header or property name: a token as HTTP has them (NATS headers are HTTP-like)
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
#: what no header value may hold: a line break would start a header of its own
_BREAK = re.compile(r"[\x00\r\n]")

#: the options every bus kind takes, merged into each kind's schema
COMMON_OPTIONS: dict[str, Any] = {
    "url": {"type": "string", "minLength": 1,
            "description": "scheme://[user[:password]@]host[:port] (no template)"},
    "password_file": {"type": "string",
                      "description": "read the URL's password from this file (empty: none)"},
    "json": {"description": "the message as JSON (templates); default: id, rule, event, "
                            "matched_at"},
    "body": {"type": "string", "description": "the message as text (a template)"},
    "timeout": {"type": "number", "exclusiveMinimum": 0,
                "description": "seconds to wait for the broker's acknowledgement"},
}


@dataclass(frozen=True)
class Broker:
    """A broker's address as the gate checks it, and the credentials that go with it."""

    address: Address
    user: str | None = None
    password: str | None = None

    @property
    def where(self) -> str:
        """`scheme://host:port`: what queue names and logs may show."""
        return self.address.origin

    @property
    def credentials(self) -> bool:
        return self.user is not None or self.password is not None


def parse_broker(url: str, schemes: tuple[str, ...], password_file: str = "") -> Broker:
    """The URL's scheme, host and port (nothing after them), user and password; ConfigError
    with a sentence that never repeats the URL (it may hold a password)."""
    if "{{" in url or "{%" in url:
        raise ConfigError("url must not hold a template (a queue and a gate check per server)")
    try:
        address, userinfo = parse_url(url, schemes, fragment=False)
    except BadAddress as exc:
        raise ConfigError(f"url: {exc}") from None
    if address.path not in ("", "/") or address.query:
        raise ConfigError("url names a server only: scheme://[user[:password]@]host[:port]")
    user = password = None
    if userinfo is not None:
        name, colon, secret = userinfo.partition(":")
        user, password = name, (secret if colon else None)
    if password_file:
        if password is not None:
            raise ConfigError("give the password in url or password_file, not both")
        password = read_secret(password_file)
    return Broker(Address(address.scheme, address.host, address.port), user, password)


def read_secret(path: str) -> str:
    """A password file's first line (a Docker or Kubernetes secret)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read(4096).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"password_file: cannot read it ({type(exc).__name__})") from None
    return lines[0] if lines else ""


def check_header(name: str, value: str, what: str = "header") -> str | None:
    """Why a rendered header (or property) cannot be sent as it is, or None."""
    if not _NAME.fullmatch(name):
        return f"{what} name {name[:40]!r} is not a plain token"
    if _BREAK.search(value):
        return f"{what} {name} holds a line break or NUL"
    if len(value) > 4096:
        return f"{what} {name} is longer than 4096 characters"
    return None


def is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def over_limit(size: int, limit: int, name: str) -> PermanentActionError:
    """The dead letter of a message the server would refuse for its size."""
    return PermanentActionError(f"message of {size} bytes is over the server's {name} of "
                                f"{limit} bytes")


C = TypeVar("C")


class Held(Generic[C]):
    """One connection per queue: a queue has one worker thread, so its connection is used by
    one thread at a time; a connection that failed is dropped and made again next attempt."""

    def __init__(self, closer: Callable[[C], None]) -> None:
        self._closer = closer
        self._conns: dict[str, tuple[Broker, C]] = {}
        self._lock = threading.Lock()

    def get(self, target: str, broker: Broker) -> C | None:
        with self._lock:
            held = self._conns.get(target)
        return held[1] if held is not None and held[0] == broker else None

    def put(self, target: str, broker: Broker, conn: C) -> None:
        with self._lock:
            old = self._conns.get(target)
            self._conns[target] = (broker, conn)
        if old is not None and old[1] is not conn:
            self._close(old[1])

    def drop(self, target: str) -> None:
        with self._lock:
            held = self._conns.pop(target, None)
        if held is not None:
            self._close(held[1])

    def all(self) -> list[C]:
        with self._lock:
            return [conn for _, conn in self._conns.values()]

    def close(self) -> None:
        with self._lock:
            targets = list(self._conns)
        for target in targets:
            self.drop(target)

    def _close(self, conn: C) -> None:
        try:
            self._closer(conn)
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass


class BusAction:
    """The shared half of a bus kind; subclasses set the names and implement `path_problems`
    (a rendered subject or topic), `prepare` and `send_batch`."""

    name: ClassVar[str]
    schemes: ClassVar[tuple[str, ...]]
    tls_schemes: ClassVar[tuple[str, ...]]
    durable: ClassVar[bool] = True
    per_event: ClassVar[bool] = False
    acts_on_objects: ClassVar[bool] = False
    #: the option naming where on the server (subject, topic, routing_key)
    where_option: ClassVar[str]

    def __init__(self, context: ActionContext) -> None:
        self.context = context
        self._brokers: dict[tuple[str, str], Broker] = {}
        self._lock = threading.Lock()

    # -- checks ---------------------------------------------------------------------------------
    @classmethod
    def path_problems(cls, value: str) -> list[str]:
        raise NotImplementedError

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """The URL parses (a server only), json and body exclude each other, a literal
        subject or topic is one the server takes, headers are plain."""
        problems: list[str] = []
        url = options.get("url")
        if not isinstance(url, str):
            problems.append("url is required")
        else:
            try:
                broker = parse_broker(url, cls.schemes)
            except ConfigError as exc:
                problems.append(str(exc))
            else:
                if broker.password is not None and options.get("password_file"):
                    problems.append("give the password in url or password_file, not both")
        if "json" in options and "body" in options:
            problems.append("give either json or body, not both")
        where = options.get(cls.where_option)
        if isinstance(where, str) and not is_template(where):
            problems.extend(cls.path_problems(where))
        for key in ("headers", "properties"):
            mapping = options.get(key)
            if isinstance(mapping, Mapping):
                for name in mapping:
                    if not _NAME.fullmatch(str(name)):
                        problems.append(f"{key}: name {str(name)[:40]!r} is not a plain token")
        return problems

    # -- queues ---------------------------------------------------------------------------------
    def broker(self, options: Mapping[str, Any]) -> Broker:
        """The options' broker with its password; PermanentActionError if it cannot be used."""
        url, password_file = str(options.get("url", "")), str(options.get("password_file") or "")
        cached = self._brokers.get((url, password_file))
        if cached is not None:
            return cached
        try:
            broker = parse_broker(url, self.schemes, password_file)
        except ConfigError as exc:
            raise PermanentActionError(f"{self.name}: {exc}") from None
        with self._lock:
            if len(self._brokers) < MAX_BROKERS:
                self._brokers[(url, password_file)] = broker
        return broker

    def target(self, options: dict[str, Any]) -> str:
        """One queue per server."""
        try:
            where = self.broker(options).where
        except PermanentActionError:
            where = "invalid"
        return f"{self.name}:{where}"

    def describe(self, job: ActionJob) -> str:
        """scheme://host:port and the subject or topic, never the password."""
        where = job.options.get(self.where_option, "")
        return f"{self.target(job.options).partition(':')[2]} {str(where)[:120]}"

    def inactive(self, options: dict[str, Any]) -> bool:
        """A message is always sent."""
        return False

    def flush(self) -> None:
        """Nothing buffered: a batch is acknowledged before its jobs are done."""

    def batch_size(self, options: dict[str, Any]) -> int:
        """How many of a queue's messages go out before their acknowledgements are awaited."""
        return BATCH

    def timeout(self, options: Mapping[str, Any]) -> float:
        value = options.get("timeout")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        return DEFAULT_TIMEOUT

    def tls_context(self) -> ssl.SSLContext:
        """The TLS settings eventd uses everywhere (EVENTD_CA_FILE, client certificate)."""
        return self.context.settings.tls.context

    # -- what is sent ---------------------------------------------------------------------------
    @staticmethod
    def body(job: ActionJob) -> bytes:
        """`json` as JSON, `body` as UTF-8, or the event and the rule's decision
        (PermanentActionError if event data makes it unencodable)."""
        options = job.options
        if "json" in options:
            return json_message(options["json"], job.kind)
        if "body" in options:
            return utf8_message(str(options["body"]), job.kind)
        return json_message({
            "id": job.id, "rule": job.rule, "event": job.event,
            "matched_at": _dt.datetime.fromtimestamp(job.created_at, _UTC).isoformat()},
            job.kind)

    def headers(self, options: Mapping[str, Any], key: str = "headers",
                what: str = "header") -> list[tuple[str, str]]:
        """The rendered headers (or properties), each checked; PermanentActionError if one
        cannot be sent as it is (a line break from event data)."""
        mapping = options.get(key) or {}
        if not isinstance(mapping, Mapping):
            raise PermanentActionError(f"{self.name}: {key} must be a mapping")
        found = []
        for name, value in mapping.items():
            name, text = str(name), str(value)
            problem = check_header(name, text, what)
            if problem:
                raise PermanentActionError(f"{self.name}: {problem}")
            found.append((name, text))
        return found

    def outbound(self, broker: Broker, path: str, body: bytes,
                 headers: tuple[tuple[str, str], ...] = (), verb: str = "publish",
                 where: str | None = None, **facts: str) -> Outbound:
        """The publish under the gate's `bus` policy: the server's scheme, host and port, and
        the subject, topic or exchange/routing key in the path; `where` (the path unless
        given: a routing key) is checked once rendered."""
        problems = self.path_problems(path if where is None else where)
        if problems:
            raise PermanentActionError(f"{self.name}: {'; '.join(problems)}")
        address = Address(broker.address.scheme, broker.address.host, broker.address.port, path)
        return Outbound(kind=self.name, policy="bus", calls=(Call(
            verb, address, headers, body, credentials=broker.credentials),),
            facts={"tls": "yes" if broker.address.scheme in self.tls_schemes else "no",
                   **facts})

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """One message (the dispatcher batches through send_batch)."""
        result = self.send_batch([(job, outbound)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def send_batch(self, items: list[tuple[ActionJob, Outbound]]) -> list[str | ActionError]:
        raise NotImplementedError

    def same_broker(self, job: ActionJob, outbound: Outbound) -> Broker:
        """The job's broker, which must be where the admitted call goes."""
        broker = self.broker(job.options)
        address = outbound.calls[0].address
        if (address.scheme, address.host, address.port) != \
                (broker.address.scheme, broker.address.host, broker.address.port):
            raise PermanentActionError(f"{self.name}: the call's address is not its url's")
        return broker


__all__ = ["BATCH", "COMMON_OPTIONS", "BusAction", "Broker", "Held", "check_header",
           "over_limit", "parse_broker"]
