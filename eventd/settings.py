"""Typed, frozen settings built from an injected environment mapping and the command line.

Nothing here reads os.environ at import time; `Settings.from_env(environ)` is the one door.
Also here, as httpx keeps its SSL configuration in `_config.py`: `TlsOptions` (the CA file and
client certificate every outbound TLS connection uses) and `read_secret_files` (the `_FILE`
convention of Docker secrets and Kubernetes).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from eventd.errors import ConfigError

if TYPE_CHECKING:
    import requests

DEFAULT_STREAM_HOST = "wss://ws.cloud.docker.com/"
DEFAULT_REST_HOST = "https://cloud.docker.com/"

# The timing defaults, in one place: Settings, the stream's options, the consumer loop's, the
# backoff policy (`eventd.backoff`) and delivery's retry policy all start from these.
DEFAULT_PING_INTERVAL = 10.0
DEFAULT_PONG_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 300.0
#: the first wait after a failure (stream reconnects, delivery probes, backfill retries)...
DEFAULT_BACKOFF_INITIAL = 1.0
#: ...doubling per failure in a row up to this
DEFAULT_BACKOFF_MAX = 60.0
#: a connection that lasted this long was healthy: the backoff starts over after it
DEFAULT_HEALTHY_AFTER = 30.0
DEFAULT_AUTH_ERROR_WAIT = 3600.0


def _host(value: str, schemes: tuple[str, ...], variable: str) -> str:
    """Normalise a host URL to end in exactly one slash; reject other schemes."""
    parts = urlsplit(value.strip())
    if parts.scheme not in schemes or not parts.netloc:
        wanted = " or ".join(s + "://" for s in schemes)
        raise ConfigError(f"{variable} must be a {wanted} URL, got {value!r}")
    return value.strip().rstrip("/") + "/"


#: secrets that may come from a file named by `<NAME>_FILE` (Docker secrets, Kubernetes)
SECRET_FILE_VARIABLES = ("DOCKERCLOUD_AUTH", "DOCKERCLOUD_APIKEY", "DOCKERCLOUD_PASS",
                         "EVENTD_STORE_PASSWORD", "EVENTD_JOB_KEY", "EVENTD_UI_TOKEN")
#: shortest console token accepted (EVENTD_UI_TOKEN): a guessable one protects nothing
MIN_UI_TOKEN = 16
_SECRET_FILE_LIMIT = 64 * 1024


def read_secret_files(environ: Mapping[str, str],
                      names: tuple[str, ...] = SECRET_FILE_VARIABLES) -> dict[str, str]:
    """The environment with each `NAME` filled from the file `NAME_FILE` names.

    Setting both is an error, as is a file that cannot be read or is empty; messages name the
    variable and the path, never the content. Surrounding whitespace (the trailing newline of
    `echo secret > file`) is dropped.
    """
    found = dict(environ)
    for name in names:
        path = environ.get(f"{name}_FILE", "")
        if not path:
            continue
        if environ.get(name):
            raise ConfigError(f"set {name} or {name}_FILE, not both")
        try:
            with open(path, "rb") as handle:
                data = handle.read(_SECRET_FILE_LIMIT + 1)
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror or exc}") from None
        if len(data) > _SECRET_FILE_LIMIT:
            raise ConfigError(f"{name}_FILE: {path} is larger than {_SECRET_FILE_LIMIT} bytes")
        try:
            value = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{name}_FILE: {path} is not UTF-8 text") from None
        if not value:
            raise ConfigError(f"{name}_FILE: {path} is empty")
        found[name] = value
    return found


def is_loopback_host(url: str) -> bool:
    """Whether a URL's host is this machine (`localhost`, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_warning(url: str, variable: str) -> str | None:
    """A warning when credentials would travel unencrypted to another machine, else None."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("ws", "http") and not is_loopback_host(url):
        secure = "wss" if scheme == "ws" else "https"
        return (f"{variable} is {scheme}://{urlsplit(url).netloc}: the credentials go to another "
                f"machine unencrypted, readable by anyone on the way; use {secure}://")
    return None


def _readable_file(value: str | Path, variable: str) -> Path:
    path = Path(value)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None
    return path


@dataclass(frozen=True)
class TlsOptions:
    """Extra trust and a client certificate for every outbound TLS connection.

    `ca_file` adds CAs to those already trusted (the system's and certifi's, which requests
    uses), so a private CA for one host never breaks a public webhook. `client_cert` (with
    `client_key` unless the key is in the same PEM file) is presented to servers that ask.
    """

    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @property
    def custom(self) -> bool:
        """Whether any option is set (otherwise the libraries' defaults apply untouched)."""
        return bool(self.ca_file or self.client_cert)

    @cached_property
    def context(self) -> ssl.SSLContext:
        """One verifying client context for websocket-client and requests alike."""
        try:
            context = ssl.create_default_context()
            try:
                import certifi

                context.load_verify_locations(cafile=certifi.where())
            except ImportError:  # requests normally brings certifi; the system's CAs remain
                pass
            if self.ca_file is not None:
                context.load_verify_locations(cafile=str(self.ca_file))
            if self.client_cert is not None:
                context.load_cert_chain(str(self.client_cert),
                                        str(self.client_key) if self.client_key else None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"TLS files (--ca-file, --client-cert, --client-key): {exc}") from None
        return context

    def sslopt(self) -> dict[str, Any]:
        """websocket-client's `sslopt` (empty: its defaults)."""
        return {"context": self.context} if self.custom else {}

    def configure(self, session: requests.Session) -> requests.Session:
        """Make a requests Session verify (and present a certificate) with `context`."""
        if self.custom:
            session.mount("https://", _context_adapter(self.context,
                                                       type(session.get_adapter("https://"))))
        return session


def _context_adapter(context: ssl.SSLContext, base: Any = None) -> Any:
    """A requests HTTPAdapter whose connections use `context` for trust and certificates;
    built on `base`, the session's own adapter class (eventd's resets a lease's requests)."""
    from requests.adapters import HTTPAdapter

    if not (isinstance(base, type) and issubclass(base, HTTPAdapter)):
        base = HTTPAdapter

    class ContextAdapter(base):  # type: ignore[misc]
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["ssl_context"] = context
            super().init_poolmanager(*args, **kwargs)

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            kwargs["ssl_context"] = context
            return super().proxy_manager_for(proxy, **kwargs)

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            base: Any = super()  # types-requests types this base loosely, or not at all
            base.cert_verify(conn, url, verify, cert)
            if verify is True:  # the context already trusts certifi's CAs and ca_file's
                conn.ca_certs = None
                conn.ca_cert_dir = None

    return ContextAdapter()


def tls_from_env(environ: Mapping[str, str], ca_file: str | Path | None = None,
                 client_cert: str | Path | None = None,
                 client_key: str | Path | None = None) -> TlsOptions:
    """TLS options from flags (given here) or EVENTD_CA_FILE / EVENTD_CLIENT_CERT / _KEY."""
    ca = ca_file or environ.get("EVENTD_CA_FILE") or None
    cert = client_cert or environ.get("EVENTD_CLIENT_CERT") or None
    key = client_key or environ.get("EVENTD_CLIENT_KEY") or None
    if key and not cert:
        raise ConfigError("EVENTD_CLIENT_KEY (--client-key) needs EVENTD_CLIENT_CERT (--client-cert)")
    return TlsOptions(
        ca_file=_readable_file(ca, "EVENTD_CA_FILE (--ca-file)") if ca else None,
        client_cert=_readable_file(cert, "EVENTD_CLIENT_CERT (--client-cert)") if cert else None,
        client_key=_readable_file(key, "EVENTD_CLIENT_KEY (--client-key)") if key else None)


def parse_duration(value: str | int | float, name: str = "duration") -> float:
    """Parse `30`, `30s`, `500ms`, `10m`, `1h`, `1d` into seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
        for suffix in ("ms", "s", "m", "h", "d"):
            if text.endswith(suffix):
                number, factor = text[: -len(suffix)], units[suffix]
                break
        else:
            number, factor = text, 1.0
        try:
            seconds = float(number) * factor
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not a duration (e.g. 30s, 10m, 1h)") from None
    if seconds < 0:
        raise ConfigError(f"{name}: {value!r} must not be negative")
    return seconds


def parse_addr(value: str, name: str = "--metrics-addr") -> tuple[str, int]:
    """Parse HOST:PORT (HOST may be empty for all interfaces; PORT may be 0)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}: {value!r} is not HOST:PORT")
    return (host.strip("[]") or "0.0.0.0", int(port))


_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_namespaces(value: str) -> tuple[str, ...]:
    """`acme, globex` -> ("acme", "globex"); empty -> () (the user's own namespace)."""
    names: list[str] = []
    for item in value.split(","):
        name = item.strip().strip("/")
        if not name:
            continue
        if not _NAMESPACE.match(name):
            raise ConfigError(f"DOCKERCLOUD_NAMESPACE: {name!r} is not a user or organisation name")
        if name not in names:
            names.append(name)
    return tuple(names)


def _store_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """EVENTD_STORE and EVENTD_CLUSTER (the store's password is read with the other secrets)."""
    values: dict[str, Any] = {}
    if environ.get("EVENTD_STORE", "").strip():
        values["store"] = environ["EVENTD_STORE"].strip()
    if environ.get("EVENTD_CLUSTER", "").strip():
        values["cluster"] = environ["EVENTD_CLUSTER"].strip()
    return values


def check_cluster(name: str) -> str:
    """A cluster name is a key prefix: letters, digits, `._-`, at most 64."""
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
        raise ConfigError(f"--cluster / EVENTD_CLUSTER: {name!r} must be 1-64 letters, digits, "
                          "'.', '_' or '-'")
    return name


@dataclass(frozen=True)
class Settings:
    """Everything the daemon needs to know, with the defaults the issues pin."""

    stream_host: str = DEFAULT_STREAM_HOST
    rest_host: str = DEFAULT_REST_HOST
    namespace: str | None = None
    #: DOCKERCLOUD_NAMESPACE as a list (`acme,globex`): one stream each; empty: the user's own
    namespaces: tuple[str, ...] = ()
    rules: tuple[Path, ...] = (Path("rules"),)
    metrics_addr: tuple[str, int] | None = None
    state_dir: Path = Path("state")
    record: Path | None = None
    log_format: str = "text"
    log_level: str = "INFO"
    on_auth_error: str = "exit"  # exit | wait
    auth_error_wait: float = DEFAULT_AUTH_ERROR_WAIT
    shutdown_timeout: float = 10.0
    ping_interval: float = DEFAULT_PING_INTERVAL
    pong_timeout: float = DEFAULT_PONG_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    healthy_after: float = DEFAULT_HEALTHY_AFTER
    #: events between reader and engine (backpressure beyond); each parsed event costs ~1.4 KiB
    #: and the queue is full whenever the stream outruns the rules: 2048 cost 1 MiB more at
    #: the same CPU per event (bench/memprobe.py, issue 10), 512 about 0.9 MiB less than 1024
    #: (issue 21; a socket read of 64 KiB is ~200 events, so the reader still runs a batch ahead)
    queue_size: int = 512
    dedupe_window: int = 50_000  # event uuids remembered: between half of it and all of it
    max_event_age: float = 900.0
    #: SQLite `synchronous` for the spool. In WAL mode "NORMAL" keeps every committed action
    #: through a crash or SIGKILL of eventd (the WAL is in the OS page cache); "FULL" also
    #: through a power loss, at about 5x the cost per accepted action.
    spool_sync: str = "NORMAL"
    #: which store keeps that state: a name of `eventd.stores.STORES` ("sqlite", in
    #: `state_dir`; "memory": nothing kept across a restart), or a store URL.
    store: str = "sqlite"
    #: prefixes every key of a shared store (EVENTD_CLUSTER), so clusters can share one Redis
    cluster: str = "eventd"
    #: how long a replica's lease on a namespace's stream lasts unless renewed (every ttl/3)
    lease_ttl: float = 10.0
    user_agent: str = "eventd"
    tls: TlsOptions = TlsOptions()
    #: the Redis store's password: EVENTD_STORE_PASSWORD or EVENTD_STORE_PASSWORD_FILE
    store_password: str | None = field(default=None, repr=False)
    #: --allow-host / EVENTD_ALLOW_HOSTS: host patterns (fnmatch) webhooks and Alertmanager may
    #: reach; empty allows every host.
    allow_hosts: tuple[str, ...] = ()
    #: where events come from: dockercloud (the Stream API) or docker (a Docker Engine's /events)
    source: str = "dockercloud"
    #: the Docker Engine, found as the docker CLI finds it (DOCKER_HOST, DOCKER_TLS_VERIFY,
    #: DOCKER_CERT_PATH); used by the docker source and the docker action
    docker_host: str = "unix:///var/run/docker.sock"
    docker_tls_verify: str | None = None
    docker_cert_path: str | None = None
    #: firing alerts are re-sent this often, with endsAt 4 x this ahead (EVENTD_ALERT_RESEND)
    alert_resend: float = 60.0
    #: the key that signs spooled jobs (EVENTD_JOB_KEY or EVENTD_JOB_KEY_FILE): the same on
    #: every replica of a cluster; without it eventd.delivery.signing picks one and says where
    job_key: str | None = field(default=None, repr=False)
    #: --allow-plaintext / EVENTD_ALLOW_PLAINTEXT: let credentials go over http:// to another
    #: machine (the gate refuses that otherwise)
    allow_plaintext: bool = False
    #: EVENTD_SELF_CONTAINER: eventd's own container (id or name) when it cannot be found from
    #: /proc; the docker action never acts on it
    self_container: str | None = None
    #: --ui: serve the console (/ui/ and /api/v1/) on the metrics port
    ui: bool = True
    #: EVENTD_UI_TOKEN or EVENTD_UI_TOKEN_FILE: the bearer token the console's actions need
    #: (retry, discard, silences); without it the console is read-only
    ui_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from DOCKERCLOUD_* variables, then apply explicit overrides."""
        secrets = read_secret_files(environ, ("EVENTD_STORE_PASSWORD", "EVENTD_JOB_KEY",
                                              "EVENTD_UI_TOKEN"))
        password = secrets.get("EVENTD_STORE_PASSWORD") or None
        stream = environ.get("DOCKERCLOUD_STREAM_HOST") or environ.get("DOCKERCLOUD_STREAM_URL") \
            or DEFAULT_STREAM_HOST
        rest = environ.get("DOCKERCLOUD_REST_HOST") or DEFAULT_REST_HOST
        values: dict[str, Any] = {
            "stream_host": _host(stream, ("ws", "wss"), "DOCKERCLOUD_STREAM_HOST"),
            "rest_host": _host(rest, ("http", "https"), "DOCKERCLOUD_REST_HOST"),
            "store_password": password,
            "job_key": secrets.get("EVENTD_JOB_KEY") or None,
            "ui_token": secrets.get("EVENTD_UI_TOKEN", "").strip() or None,
        }
        if "tls" not in overrides or overrides["tls"] is None:
            values["tls"] = tls_from_env(environ)
        values.update(_store_values(environ))
        names = parse_namespaces(environ.get("DOCKERCLOUD_NAMESPACE") or "")
        values["namespaces"] = names
        values["namespace"] = names[0] if len(names) == 1 else None
        sync = environ.get("EVENTD_SPOOL_SYNC", "").strip().upper()
        if sync:
            if sync not in ("NORMAL", "FULL"):
                raise ConfigError(f"EVENTD_SPOOL_SYNC must be normal or full, got {sync.lower()!r}")
            values["spool_sync"] = sync
        hosts = environ.get("EVENTD_ALLOW_HOSTS", "").replace(",", " ").split()
        if hosts:
            values["allow_hosts"] = tuple(hosts)
        source = environ.get("EVENTD_SOURCE", "").strip()
        if source:
            values["source"] = source
        if environ.get("DOCKER_HOST", "").strip():
            values["docker_host"] = environ["DOCKER_HOST"].strip()
        if "DOCKER_TLS_VERIFY" in environ:
            values["docker_tls_verify"] = environ["DOCKER_TLS_VERIFY"]
        if environ.get("DOCKER_CERT_PATH"):
            values["docker_cert_path"] = environ["DOCKER_CERT_PATH"]
        plaintext = environ.get("EVENTD_ALLOW_PLAINTEXT", "").strip().lower()
        if plaintext:
            if plaintext not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ConfigError(f"EVENTD_ALLOW_PLAINTEXT must be true or false, got {plaintext!r}")
            values["allow_plaintext"] = plaintext in ("1", "true", "yes", "on")
        if environ.get("EVENTD_SELF_CONTAINER", "").strip():
            values["self_container"] = environ["EVENTD_SELF_CONTAINER"].strip()
        resend = environ.get("EVENTD_ALERT_RESEND", "").strip()
        if resend:
            values["alert_resend"] = parse_duration(resend, "EVENTD_ALERT_RESEND")
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise TypeError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = value
        check_cluster(values.get("cluster", "eventd"))
        return cls(**values)

    def __post_init__(self) -> None:
        if self.ui_token is not None and len(self.ui_token) < MIN_UI_TOKEN:
            raise ConfigError(f"EVENTD_UI_TOKEN must be at least {MIN_UI_TOKEN} characters "
                              "(e.g. `openssl rand -hex 32`)")
        if self.alert_resend <= 0:
            raise ConfigError(f"--alert-resend (EVENTD_ALERT_RESEND) must be more than 0, "
                              f"got {self.alert_resend:g} s")

    @property
    def stream_url(self) -> str:
        """`<stream host>/api/audit/v1/[<namespace>/]events/` (reference 1.1)."""
        return self.stream_url_for(self.namespace)

    def stream_url_for(self, namespace: str | None) -> str:
        """The stream URL of one namespace (None: the user's own)."""
        ns = f"{namespace}/" if namespace else ""
        return f"{self.stream_host}api/audit/v1/{ns}events/"

    @property
    def stream_namespaces(self) -> tuple[str | None, ...]:
        """The namespaces to consume, one stream each (None: the user's own)."""
        return self.namespaces or (self.namespace,)

    def rest_url(self, path: str) -> str:
        """The REST host joined with a resource path such as an event's resource_uri."""
        return self.rest_host + path.lstrip("/")
