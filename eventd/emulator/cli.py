"""`eventd emulate`: run the emulator in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TextIO

from eventd.emulator.errors import ListenError, ScenarioError

logger = logging.getLogger(__name__)


#: `eventd emulate --help`'s epilog: the control endpoint, with curl examples.
CONTROL_HELP = """\
control endpoint (no auth, on the REST port; 127.0.0.1 only):
  GET  /_emulator/state        the world: stacks, services, containers, nodes, actions
  GET  /_emulator/calls        the REST calls received (Authorization redacted; ?reveal=1)
  POST /_emulator/events       send events on the stream (missing uuid/datetime are filled in)
  POST /_emulator/faults       drop, silent, reject_auth, fail_handshake, fail_rest, delay,
                               fail_actions, restart_stream, clear
  GET  /_emulator/faults       the faults in force

examples (with the default ports):
  # send a container event (a real uuid from /_emulator/state makes it one of the world's)
  curl -s -X POST http://127.0.0.1:8080/_emulator/events -H 'Content-Type: application/json' \\
       -d '{"type": "container", "action": "update", "state": "Stopped",
            "resource_uri": "/api/app/v1/user/container/<uuid>/"}'
  # drop every stream connection (eventd reconnects and reports the gap)
  curl -s -X POST http://127.0.0.1:8080/_emulator/faults -H 'Content-Type: application/json' \\
       -d '{"drop": true}'
  # answer the next 3 REST calls 503, then heal
  curl -s -X POST http://127.0.0.1:8080/_emulator/faults -H 'Content-Type: application/json' \\
       -d '{"fail_rest": {"status": 503, "count": 3}}'
  curl -s http://127.0.0.1:8080/_emulator/state
"""

#: Scenarios shipped with the package, by name (`--scenario demo`).
SCENARIOS = Path(__file__).parent / "scenarios"


def scenario_file(given: str | None) -> str | None:
    """A shipped scenario's path when `given` is its bare name (`demo`), else `given` as is."""
    if given and not Path(given).exists() and (SCENARIOS / f"{given}.yaml").is_file():
        return str(SCENARIOS / f"{given}.yaml")
    return given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to a (sub)command parser."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--rest-port", type=int, default=8080,
                        help="REST API port, 0 picks a free one (default 8080)")
    parser.add_argument("--stream-port", type=int, default=8081,
                        help="Stream API port, 0 picks a free one (default 8081)")
    parser.add_argument("--user", default="user", help="accepted user name (default user)")
    parser.add_argument("--apikey", default="apikey", help="accepted API key (default apikey)")
    parser.add_argument("--token", default=None,
                        help="an opaque Authorization value accepted as well (DOCKERCLOUD_AUTH)")
    parser.add_argument("--namespace", default=None,
                        help="namespace, or a comma-separated list served side by side "
                             "(default: the user)")
    shipped = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.yaml")))
    parser.add_argument("--scenario", default=None, metavar="FILE|NAME",
                        help="scenario YAML: a world and a timeline of faults and events; "
                             f"or a shipped one by name ({shipped})")
    parser.add_argument("--tick", type=float, default=0.5,
                        help="seconds per step of a running action (default 0.5)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible uuids")
    parser.add_argument("--tls", action="store_true",
                        help="serve https:// and wss:// with a self-signed certificate it writes "
                             "(its path is printed as EVENTD_CA_FILE)")
    parser.add_argument("--tls-dir", type=Path, default=None, metavar="DIR",
                        help="with --tls: write the certificate and key here (default: a new "
                             "temporary directory)")


def export_lines(rest_url: str, stream_url: str, user: str, apikey: str, auth: str,
                 namespace: str) -> list[str]:
    """The shell lines that point a client at the emulator."""
    lines = [f"export DOCKERCLOUD_REST_HOST={shlex.quote(rest_url)}",
             f"export DOCKERCLOUD_STREAM_HOST={shlex.quote(stream_url)}",
             f"export DOCKERCLOUD_USER={shlex.quote(user)}",
             f"export DOCKERCLOUD_APIKEY={shlex.quote(apikey)}",
             f"export DOCKERCLOUD_AUTH={shlex.quote(auth)}"]
    if namespace != user:
        lines.append(f"export DOCKERCLOUD_NAMESPACE={shlex.quote(namespace)}")
    return lines


def _configure_logging() -> None:
    """Readable lines on stderr, unless the caller already set logging up."""
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    emulator_logger = logging.getLogger("eventd.emulator")
    if emulator_logger.level == logging.NOTSET:
        emulator_logger.setLevel(logging.INFO)
    protocol_logger = logging.getLogger("eventd.emulator.stream_server.protocol")
    if protocol_logger.level == logging.NOTSET:
        protocol_logger.setLevel(logging.WARNING)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Start the emulator, print the export lines, serve until SIGINT/SIGTERM; exit code."""
    from eventd.emulator.core import Emulator

    out = out or sys.stdout
    _configure_logging()
    names = [n.strip() for n in (args.namespace or "").split(",") if n.strip()]
    namespace = ",".join(names) or args.user
    try:
        emulator = Emulator(user=args.user, apikey=args.apikey, token=args.token,
                            namespace=(names or [args.user])[0], namespaces=names[1:],
                            scenario=scenario_file(args.scenario), host=args.host,
                            rest_port=args.rest_port, stream_port=args.stream_port,
                            tick=args.tick, seed=getattr(args, "seed", None),
                            tls=getattr(args, "tls", False), tls_dir=getattr(args, "tls_dir", None))
    except ScenarioError as exc:
        print(f"eventd emulate: {exc}", file=sys.stderr)
        return 2
    except (ImportError, OSError) as exc:  # --tls without `cryptography`, or an unwritable dir
        print(f"eventd emulate: cannot write the TLS certificate: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            emulator.start()
        except ListenError as exc:
            print(f"eventd emulate: {exc} (--rest-port / --stream-port 0 picks a free port)",
                  file=sys.stderr)
            emulator.stop()
            return 2
        try:
            auth = args.token or emulator.auth_header
            for line in export_lines(emulator.rest_url, emulator.stream_url, args.user,
                                     args.apikey, auth, namespace):
                print(line, file=out)
            if emulator.ca_file is not None:
                print(f"export EVENTD_CA_FILE={shlex.quote(str(emulator.ca_file))}", file=out)
            out.flush()
            while not stopping.wait(0.5):
                pass
        finally:
            emulator.stop()
        logger.info("emulator stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """`python -m eventd.emulator`."""
    parser = argparse.ArgumentParser(prog="python -m eventd.emulator",
                                     description="Run a Docker Cloud emulator (Stream + REST).",
                                     epilog=CONTROL_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
