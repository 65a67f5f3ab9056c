"""The command line: run, init, check, schema, test, replay, emulate, demo, receive, deadletter,
silence, status, db, audit.

Exit codes (pinned): 0 success or stopped by SIGTERM/SIGINT; 1 `check` found problems
(or replay had failures); 2 configuration or rules error; 3 credentials rejected.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eventd import __version__
from eventd.errors import ConfigError, CredentialsMissing, RuleError, StateDirError, StoreError

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_CONFIG = 2
EXIT_AUTH = 3

log = logging.getLogger("eventd.cli")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; tests and deploy checks read flags from here."""
    parser = argparse.ArgumentParser(
        prog="eventd", description="Event-stream automation for the Docker Cloud API, or for a "
        "Docker Engine's events (`eventd run --source docker`). Start with `eventd demo`, or "
        "`eventd init rules/` for the sample rules.")
    parser.add_argument("--version", action="version", version=f"eventd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubcommandParser)
    sub.required = True

    run = sub.add_parser("run", help="consume the Stream API and run rules (the daemon)")
    _add_rules(run)
    _add_logging(run)
    run.add_argument("--metrics-addr", metavar="HOST:PORT",
                     help="serve /metrics, /healthz, /readyz here (env EVENTD_METRICS_ADDR)")
    _add_state_dir(run)
    _add_store(run)
    run.add_argument("--source", default=None, metavar="NAME",
                     help="where events come from: dockercloud (default) or docker, a Docker "
                          "Engine found as the docker CLI finds it (env EVENTD_SOURCE)")
    run.add_argument("--record", metavar="FILE", type=Path,
                     help="append every event received, as received, one JSON per line")
    run.add_argument("--on-auth-error", choices=("exit", "wait"), default=None,
                     help="credentials rejected: exit 3 (default) or wait and try once more")
    run.add_argument("--auth-error-wait", metavar="DURATION", default=None,
                     help="with --on-auth-error wait: how long (default 1h)")
    run.add_argument("--shutdown-timeout", metavar="DURATION", default=None,
                     help="time to finish in-flight work on SIGTERM (default 10s)")
    run.add_argument("--ping-interval", metavar="DURATION", default=None,
                     help="websocket ping period (default 10s)")
    run.add_argument("--pong-timeout", metavar="DURATION", default=None,
                     help="reconnect when a pong is this late (default 10s)")
    run.add_argument("--idle-timeout", metavar="DURATION", default=None,
                     help="reconnect after this long without any frame (default 5m)")
    run.add_argument("--backoff-max", metavar="DURATION", default=None,
                     help="longest wait between reconnects (default 60s)")
    run.add_argument("--allow-host", metavar="PATTERN", action="append", default=None,
                     dest="allow_hosts",
                     help="only send webhooks and Alertmanager alerts to hosts matching PATTERN "
                          "(e.g. hooks.slack.com, *.example.com; repeatable; env "
                          "EVENTD_ALLOW_HOSTS, comma-separated); others are dead-lettered")
    run.add_argument("--allow-plaintext", action="store_true", default=None,
                     help="let credentials (API key, secret headers, user info) go over plain "
                          "http:// to another machine; refused otherwise (env "
                          "EVENTD_ALLOW_PLAINTEXT=true)")
    run.add_argument("--max-event-age", metavar="DURATION", default=None,
                     help="older events trigger no REST action (default 15m)")
    run.add_argument("--alert-resend", metavar="DURATION", default=None,
                     help="re-send firing alerts this often, endsAt 4x ahead (default 1m, env "
                          "EVENTD_ALERT_RESEND)")
    run.add_argument("--ca-file", metavar="FILE", default=None,
                     help="also trust these CA certificates (PEM) for the stream, REST and "
                          "webhook hosts (env EVENTD_CA_FILE)")
    run.add_argument("--client-cert", metavar="FILE", default=None,
                     help="client certificate (PEM) for TLS servers that ask for one "
                          "(env EVENTD_CLIENT_CERT)")
    run.add_argument("--client-key", metavar="FILE", default=None,
                     help="its private key, if not in the --client-cert file (env EVENTD_CLIENT_KEY)")
    run.add_argument("--ui", choices=("on", "off"), default=None,
                     help="the console at /ui/ (and its API at /api/v1/) on the metrics port: on "
                          "(default) or off (env EVENTD_UI); its actions need EVENTD_UI_TOKEN")
    run.add_argument("--lease-ttl", metavar="DURATION", default=None,
                     help="with a Redis store: how long a replica's lease on a namespace's "
                          "stream lasts unless renewed (default 10s, env EVENTD_LEASE_TTL)")
    run.set_defaults(handler=cmd_run)

    init = sub.add_parser("init", help="write the sample rules and their tests into a "
                          "directory, to start from")
    init.defer("eventd.commands.init", handler="run")

    check = sub.add_parser("check", help="validate rule files (needs no credentials)")
    check.defer("eventd.commands.check")
    check.set_defaults(handler=cmd_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of rule files")
    schema.add_argument("--tests", action="store_true",
                        help="the JSON Schema of rule test files (eventd test) instead")
    schema.set_defaults(handler=cmd_schema)

    test = sub.add_parser("test", help="run rule unit tests (calls nothing, writes nothing)")
    test.add_argument("paths", nargs="+", metavar="FILE", type=Path,
                      help="test files, or directories of them (*.yaml, *.yml)")
    test.set_defaults(handler=cmd_test)

    replay = sub.add_parser(
        "replay", help="run recorded events (JSON lines) through the rules",
        description="Run recorded events (the file of `eventd run --record`) through the rules. "
                    "Without --dry-run the actions RUN FOR REAL: REST calls (redeploy, stop...), "
                    "webhooks and alerts, through a spool in --state-dir, and replay waits for "
                    "them, retries included (up to 10 minutes per action against a dead target), "
                    "until --timeout. With --dry-run no action runs and nothing is written.")
    replay.add_argument("file", type=Path, metavar="FILE")
    _add_rules(replay)
    replay.add_argument("--dry-run", action="store_true",
                        help="run no action, write nothing: print what would run (URLs redacted); "
                             "rules with `enrich` make the read-only GET when credentials are found")
    replay.add_argument("--timeout", metavar="DURATION", default="10m",
                        help="real runs: stop waiting for actions after this long; what is left "
                             "stays in the spool (default 10m)")
    _add_state_dir(replay)
    _add_store(replay)
    _add_logging(replay)
    replay.set_defaults(handler=cmd_replay)

    emulate = sub.add_parser(
        "emulate", help="run a local Docker Cloud emulator",
        description="A local Docker Cloud (Stream + REST APIs) for eventd to run against. It "
                    "prints the export lines that point eventd at it. The sample rules post "
                    "alerts to 127.0.0.1:9099: run `eventd receive` in a third terminal.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    emulate.defer("eventd.emulator.cli", handler="run", epilog="CONTROL_HELP")

    demo = sub.add_parser("demo", help="see eventd work against the emulator, in one command")
    demo.defer("eventd.commands.demo", handler="run")

    receive = sub.add_parser("receive", help="print the alerts that arrive (the sample rules' "
                             "default webhook, 127.0.0.1:9099)")
    receive.defer("eventd.commands.receive", handler="run")

    deadletter = sub.add_parser("deadletter", help="list, retry or purge dead letters")
    deadletter.defer("eventd.commands.deadletter", handler="run")

    silence = sub.add_parser("silence", help="add, list or expire silences (mute matching "
                             "actions for a while)")
    silence.defer("eventd.commands.silence", handler="run")

    status = sub.add_parser("status", help="print a cluster: replicas, namespaces held, spool")
    status.defer("eventd.commands.status", handler="run")

    db = sub.add_parser("db", help="create eventd's PostgreSQL tables (db migrate DSN)")
    db.defer("eventd.commands.db", handler="run")

    audit = sub.add_parser("audit", help="verify an audit trail's hash chain (audit verify "
                           "PATH|DSN)")
    audit.defer("eventd.commands.audit", handler="run")
    return parser


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: options may follow positionals, and its own usage on errors.

    `eventd deadletter retry --now --state-dir D ID` parses like `... retry ID --now ...`;
    an unknown argument prints `deadletter`'s usage, not the top-level one.
    """

    _intermixing = False
    #: (module, its handler's name or None, its epilog's name or None) until _load() runs
    _deferred: tuple[str, str | None, str | None] | None = None

    def defer(self, module: str, handler: str | None = None, epilog: str | None = None) -> None:
        """Let `module.add_arguments` add this subcommand's flags only once it is chosen.

        `eventd run` then never imports the other subcommands (the demo's HTTP servers,
        secrets, tempfile...): about 1 MiB of a daemon that counts its MiB (bench/memprobe.py).
        """
        self._deferred = (module, handler, epilog)

    def _load(self) -> None:
        if self._deferred is None:
            return
        name, handler, epilog = self._deferred
        self._deferred = None
        module = importlib.import_module(name)
        if epilog is not None:
            self.epilog = getattr(module, epilog)
        module.add_arguments(self)
        if handler is not None:
            self.set_defaults(handler=getattr(module, handler))

    def format_usage(self) -> str:
        self._load()
        return super().format_usage()

    def format_help(self) -> str:
        self._load()
        return super().format_help()

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        self._load()
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            parsed, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _add_rules(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", nargs="+", action="extend", type=Path, metavar="PATH",
                        help="rule file or directory (repeatable; default ./rules, env EVENTD_RULES)")


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="spool, throttle state, dead letters (default ./state, env EVENTD_STATE_DIR)")


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="URL",
                        help="sqlite (default, in --state-dir), memory, redis://[:password@]host:port/db, "
                             "rediss://..., redis+sentinel://host:26379,host2:26379/mymaster/db "
                             "(env EVENTD_STORE)")
    parser.add_argument("--cluster", metavar="NAME",
                        help="prefix of every key in a shared store (default eventd, env EVENTD_CLUSTER)")


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="text (default) or json (env EVENTD_LOG_FORMAT)")
    parser.add_argument("--log-level", default=None, metavar="LEVEL",
                        help="DEBUG, INFO (default), WARNING, ERROR (env EVENTD_LOG_LEVEL)")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the `eventd` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    try:
        return int(args.handler(args, env) if _takes_env(args.handler) else args.handler(args))
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `eventd check ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return EXIT_OK


def _takes_env(handler: Any) -> bool:
    return getattr(handler, "__module__", "") == __name__


# -- run ---------------------------------------------------------------------------------
def _settings(args: argparse.Namespace, env: Mapping[str, str]) -> Any:
    from eventd.settings import Settings, parse_addr, parse_duration, tls_from_env

    def duration(value: str | None, name: str) -> float | None:
        return None if value is None else parse_duration(value, name)

    rules = args.rules or [Path(p) for p in env.get("EVENTD_RULES", "").split(os.pathsep) if p]
    metrics_addr = getattr(args, "metrics_addr", None) or env.get("EVENTD_METRICS_ADDR")
    overrides: dict[str, Any] = {
        "rules": tuple(rules) if rules else None,
        "state_dir": args.state_dir or (
            Path(env["EVENTD_STATE_DIR"]) if env.get("EVENTD_STATE_DIR") else None),
        "log_format": args.log_format or env.get("EVENTD_LOG_FORMAT"),
        "log_level": (args.log_level or env.get("EVENTD_LOG_LEVEL") or "INFO").upper(),
        "store": getattr(args, "store", None), "cluster": getattr(args, "cluster", None),
    }
    if hasattr(args, "record"):
        overrides.update({
            "metrics_addr": parse_addr(metrics_addr) if metrics_addr else None,
            "record": args.record,
            "source": args.source,
            "on_auth_error": args.on_auth_error,
            "auth_error_wait": duration(args.auth_error_wait, "--auth-error-wait"),
            "shutdown_timeout": duration(args.shutdown_timeout, "--shutdown-timeout"),
            "ping_interval": duration(args.ping_interval, "--ping-interval"),
            "pong_timeout": duration(args.pong_timeout, "--pong-timeout"),
            "idle_timeout": duration(args.idle_timeout, "--idle-timeout"),
            "backoff_max": duration(args.backoff_max, "--backoff-max"),
            "max_event_age": duration(args.max_event_age, "--max-event-age"),
            "alert_resend": duration(args.alert_resend, "--alert-resend"),
            "tls": tls_from_env(env, args.ca_file, args.client_cert, args.client_key),
            "allow_hosts": tuple(args.allow_hosts) if args.allow_hosts else None,
            "allow_plaintext": args.allow_plaintext,
            "lease_ttl": duration(args.lease_ttl or env.get("EVENTD_LEASE_TTL"), "--lease-ttl"),
            "ui": _on_off(args.ui or env.get("EVENTD_UI"), "--ui (EVENTD_UI)"),
        })
        if overrides["lease_ttl"] is not None and overrides["lease_ttl"] < 1.0:
            raise ConfigError(f"--lease-ttl must be at least 1s, got {overrides['lease_ttl']:g}s")
    if overrides["log_format"] not in (None, "text", "json"):
        raise ConfigError(f"EVENTD_LOG_FORMAT must be text or json, got {overrides['log_format']!r}")
    if overrides["log_level"] not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("--log-level must be DEBUG, INFO, WARNING or ERROR, "
                          f"got {overrides['log_level']!r}")
    return Settings.from_env(env, **overrides)


def _on_off(value: str | None, name: str) -> bool | None:
    if value is None or not value.strip():
        return None
    if value.strip().lower() not in ("on", "off", "true", "false", "1", "0"):
        raise ConfigError(f"{name} must be on or off, got {value!r}")
    return value.strip().lower() in ("on", "true", "1")


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """`eventd run`: the daemon, until SIGTERM/SIGINT (0) or rejected credentials (3)."""
    from eventd.clients.dockercloud.auth import load_credentials
    from eventd.ops.logconfig import configure

    try:
        settings = _settings(args, env)
    except ConfigError as exc:
        print(f"eventd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    credentials = None
    if settings.source == "dockercloud":  # other sources need no Docker Cloud credentials
        try:
            credentials = load_credentials(env)
        except CredentialsMissing as exc:
            print(f"eventd: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    configure(settings.log_format, settings.log_level,
              secrets=(*(credentials.secrets() if credentials is not None else ()),
                       *((settings.ui_token,) if settings.ui_token else ())))
    from eventd.ops import malloc

    malloc.tune(env)  # before any thread starts
    from eventd.daemon import Daemon

    daemon = Daemon(settings, credentials, env)
    stop_requested = threading.Event()
    reload_requested = threading.Event()

    def on_stop(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    def on_hup(_signum: int, _frame: Any) -> None:
        reload_requested.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        daemon.start()
    except RuleError as exc:
        _print_rule_problems(exc)
        return EXIT_CONFIG
    except (StateDirError, StoreError) as exc:  # the state cannot be used: one line, exit 2
        print(f"eventd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:  # e.g. "cannot listen on 127.0.0.1:9108: address in use"
        print(f"eventd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if len(daemon.engine.rules) == 0:
        log.warning("0 rules loaded from %s: eventd receives events but runs no action",
                    ", ".join(str(path) for path in settings.rules))
    while not daemon.stopped.is_set():
        if stop_requested.wait(0.2):
            break
        if reload_requested.is_set():
            reload_requested.clear()
            log.info("SIGHUP: reloading rules")
            daemon.reload()
    return daemon.stop()


def _print_rule_problems(exc: RuleError) -> None:
    problems = exc.problems or [exc]
    print(f"eventd: rules not loaded ({len(problems)} problem{'s' if len(problems) != 1 else ''}):",
          file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


# -- check, schema: in eventd.commands.check -------------------------------------------
def cmd_check(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """`eventd check PATH ... [--strict]`."""
    from eventd.commands import check

    return check.run(args, env)


def cmd_schema(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """`eventd schema`."""
    if getattr(args, "tests", False):
        from eventd.commands.testfile import schema_text

        print(schema_text())
        return 0
    from eventd.commands import check

    return check.schema(args)


def cmd_test(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """`eventd test FILE...`: PASS/FAIL per rule test; 1 if one failed, 2 if a file is unusable."""
    from eventd.commands import test

    return test.run(args.paths, sys.stdout)


# -- replay ------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """`eventd replay FILE --rules PATH [--dry-run]`."""
    from eventd.commands import replay

    try:
        settings = _settings(args, env)
    except ConfigError as exc:
        print(f"eventd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not args.dry_run:
        from eventd.ops.logconfig import configure

        configure(settings.log_format, settings.log_level)
    try:
        from eventd.settings import parse_duration

        timeout = parse_duration(args.timeout, "--timeout")
        return replay.run(args.file, settings, env, dry_run=args.dry_run, out=sys.stdout,
                          timeout=timeout)
    except RuleError as exc:
        _print_rule_problems(exc)
        return EXIT_CONFIG
    except (ConfigError, StoreError, OSError) as exc:
        print(f"eventd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
