"""The bus kinds' throughput (nats, mqtt, amqp) against a bare client loop of the same library
with the same acknowledgements, in the same run (issue 22).

`python bench/bus.py [--events 100000] [--runs 3] [--kinds nats,mqtt,amqp]`
`python bench/bus.py --faults` runs tests/test_bus_faults.py with bursts of 10,000 (make test
runs them with 2,000): a broker down at start, restarted mid-burst, eventd SIGKILLed mid-burst.

- eventd: the blaster streams N events, one rule publishes each (the default message: the
  event and the rule's decision) through the spool; the clock runs from the blaster's first
  byte until eventd counts N acknowledged messages.
- bare loop: N messages of the same size to the same server, each acknowledged before the next
  (JetStream PubAck; MQTT QoS 1 PUBACK; RabbitMQ publisher confirm, persistent): the simple
  client loop a user would write.
- for information: the same library pipelined by 256 (what eventd's batches do).

Rounds alternate eventd and the loops; figures are medians. Prints markdown rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402

NATS = "nats://127.0.0.1:4222"
MQTT = "mqtt://127.0.0.1:1883"
AMQP = "amqp://guest:guest@127.0.0.1:5672"
PIPELINE = 256
ROOT = Path(__file__).resolve().parents[1]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- where each kind publishes, made fresh each round ------------------------------------------------
def nats_target() -> tuple[dict[str, Any], Any]:
    from tests.bus_clients import nats_delete, nats_stream

    name, prefix = nats_stream(NATS)
    return {"url": NATS, "subject": f"{prefix}.events"}, lambda: nats_delete(NATS, name)


def mqtt_target() -> tuple[dict[str, Any], Any]:
    return {"url": MQTT, "topic": f"bench/{secrets.token_hex(4)}"}, lambda: None


def amqp_target() -> tuple[dict[str, Any], Any]:
    from tests.bus_clients import amqp_delete, amqp_queue

    queue = amqp_queue(AMQP)
    return {"url": AMQP, "routing_key": queue}, lambda: amqp_delete(AMQP, queue=queue)


TARGETS = {"nats": nats_target, "mqtt": mqtt_target, "amqp": amqp_target}


def run_eventd(kind: str, options: dict[str, Any], events: int, work: Path) -> dict[str, Any]:
    rules = work / "rules"
    rules.mkdir()
    (rules / "bus.yaml").write_text(orjson.dumps({"rules": [{
        "name": f"to-{kind}", "match": {"type": {"not": "eventd"}},
        "actions": [{kind: options}]}]}).decode())
    with harness.rest_stub() as rest, harness.blaster("--events", str(events)) as b, \
            harness.eventd(work, rules, b.host, f"http://127.0.0.1:{rest.server_port}/") as ev:
        start = b.wait_for("blast_start", 30)["t"]
        deadline = time.monotonic() + 60 + events / 300
        while True:
            values = ev.metrics(("eventd_actions_total",))
            done = ev.total(values, "eventd_actions_total", kind=kind, outcome="success")
            if done >= events:
                end = time.time()
                break
            if time.monotonic() > deadline:
                raise harness.BenchError(f"eventd published {done} of {events}: "
                                         f"{ev.stderr_tail()}")
            time.sleep(0.02 if events - done < 5000 else 0.2)
        dead = ev.total(ev.metrics(), "eventd_actions_total", kind=kind, outcome="deadletter")
        ev.terminate()
    return {"per_s": events / (end - start), "seconds": end - start, "deadletters": dead}


def payloads(events: int) -> list[bytes]:
    """Messages of the size eventd sends for the blaster's events (the default message)."""
    import random

    import streamgen

    rng = random.Random(1)
    pool = streamgen.templates(1)
    return [orjson.dumps({"id": secrets.token_hex(16), "rule": "to-bus",
                          "event": dict(rng.choice(pool), uuid=secrets.token_hex(16)),
                          "matched_at": "2026-12-05T00:00:00+00:00"}) for _ in range(events)]


# -- the bare loops: the same library, the same acknowledgements ----------------------------------
async def nats_loop(options: dict[str, Any], bodies: list[bytes], pipelined: bool) -> float:
    import nats

    nc = await nats.connect(options["url"])
    js = nc.jetstream()
    started = time.perf_counter()
    if pipelined:
        for at in range(0, len(bodies), PIPELINE):
            futures = [await js.publish_async(options["subject"], body,
                                              headers={"Nats-Msg-Id": secrets.token_hex(8)})
                       for body in bodies[at:at + PIPELINE]]
            await asyncio.gather(*futures)
    else:
        for body in bodies:
            await js.publish(options["subject"], body,
                             headers={"Nats-Msg-Id": secrets.token_hex(8)})
    seconds = time.perf_counter() - started
    await nc.close()
    return seconds


def mqtt_loop(options: dict[str, Any], bodies: list[bytes], pipelined: bool) -> float:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{secrets.token_hex(4)}",
                         protocol=paho.MQTTv5)
    client.max_inflight_messages_set(20)  # Mosquitto's Receive Maximum
    client.max_queued_messages_set(0)
    host, port = options["url"].partition("://")[2].split(":")
    client.connect(host, int(port))
    client.loop_start()
    started = time.perf_counter()
    step = PIPELINE if pipelined else 1
    for at in range(0, len(bodies), step):
        infos = [client.publish(options["topic"], body, qos=1) for body in bodies[at:at + step]]
        for info in infos:
            info.wait_for_publish(30)
    seconds = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return seconds


async def amqp_loop(options: dict[str, Any], bodies: list[bytes], pipelined: bool) -> float:
    import aio_pika

    connection = await aio_pika.connect(options["url"])
    channel = await connection.channel(publisher_confirms=True)
    exchange = channel.default_exchange
    started = time.perf_counter()
    step = PIPELINE if pipelined else 1
    for at in range(0, len(bodies), step):
        await asyncio.gather(*(exchange.publish(aio_pika.Message(
            body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=secrets.token_hex(8)), options["routing_key"])
            for body in bodies[at:at + step]))
    seconds = time.perf_counter() - started
    await connection.close()
    return seconds


def run_loop(kind: str, options: dict[str, Any], bodies: list[bytes],
             pipelined: bool) -> dict[str, Any]:
    if kind == "nats":
        seconds = asyncio.run(nats_loop(options, bodies, pipelined))
    elif kind == "mqtt":
        seconds = mqtt_loop(options, bodies, pipelined)
    else:
        seconds = asyncio.run(amqp_loop(options, bodies, pipelined))
    return {"per_s": len(bodies) / seconds, "seconds": seconds}


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in ("nats-py", "paho-mqtt", "aio-pika"))


def faults() -> int:
    env = {**os.environ, "EVENTD_BUS_BURST": "10000"}
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_bus_faults.py"], cwd=ROOT, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default="nats,mqtt,amqp")
    parser.add_argument("--faults", action="store_true")
    args = parser.parse_args()
    if args.faults:
        return faults()
    kinds = [k for k in args.kinds.split(",") if k]
    bodies = payloads(args.events)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        k: {"eventd": [], "loop": [], "pipelined": []} for k in kinds}
    with tempfile.TemporaryDirectory(prefix="eventd-bench-bus-") as tmp:
        for run in range(args.runs):
            for kind in kinds:
                say(f"round {run + 1}/{args.runs}: {kind}")
                for mode in ("eventd", "loop", "pipelined"):
                    options, cleanup = TARGETS[kind]()
                    try:
                        if mode == "eventd":
                            work = Path(tmp) / f"{kind}-{run}"
                            work.mkdir()
                            result = run_eventd(kind, options, args.events, work)
                        else:
                            result = run_loop(kind, options, bodies, mode == "pipelined")
                    finally:
                        cleanup()
                    results[kind][mode].append(result)
                    say(f"  {mode:9} {result['per_s']:,.0f} msgs/s")
    say(versions())
    for kind in kinds:
        median = {mode: statistics.median(r["per_s"] for r in runs)
                  for mode, runs in results[kind].items()}
        ratio = median["eventd"] / median["loop"]
        print(f"| {kind} kind: {args.events:,} stream events -> acknowledged messages "
              f"({args.runs} runs) | {median['eventd']:,.0f} msgs/s | {ratio:.2f}x the bare "
              f"loop | >= 0.8x | {'met' if ratio >= 0.8 else 'NOT met'} |")
        print(f"| bare {kind} loop: each message acknowledged before the next | "
              f"{median['loop']:,.0f} msgs/s | 1.00x | - | - |")
        print(f"| {kind} pipelined by {PIPELINE} (info) | {median['pipelined']:,.0f} msgs/s | "
              f"{median['pipelined'] / median['loop']:.2f}x | - | - |")
    print(f"runs: {orjson.dumps(results).decode()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
