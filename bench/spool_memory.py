"""Memory of eventd's delivery while a target is down and the spool is deep (issue 10, part 4).

`python bench/spool_memory.py [--jobs 20000] [--code DIR]` runs two scenarios, each in a fresh
process, against a webhook target where nothing listens:
- live: the jobs are accepted one by one while the target is down;
- restart: a dispatcher starts on a spool that already holds them (what a SIGKILL and restart
  leaves).
It prints the process's RSS before and after (VmRSS, VmHWM from /proc) and the Python heap the
dispatcher holds (tracemalloc, current and peak). `--code DIR` imports eventd from another
checkout, to compare before and after a change.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _dead_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


def _job(ActionJob: type, url: str, n: int) -> object:
    event = {"type": "container", "action": "update", "state": "Stopped",
             "resource_uri": f"/api/app/v1/acme/container/{n:08d}-1356-411c-8613-e15146633640/",
             "parents": ["/api/app/v1/acme/service/09cbcf8d-a727-40d9-b420-c8e18b7fa55b/",
                         "/api/app/v1/acme/stack/46aca402-2109-4a70-a378-760cfed43816/"],
             "uuid": f"{n:08d}-7c1e-4d8e-9a55-0b9c3f1e2a01", "datetime": "2016-06-01T10:15:02Z"}
    options = {"url": url, "json": {"text": f"container {n} is Stopped", "event": event}}
    return ActionJob(id=f"job-{n:08d}", rule="crash-alert", kind="webhook", options=options,
                     event=event, target=f"webhook:{url.rsplit('/', 1)[0]}",
                     created_at=time.time())


def child(scenario: str, jobs: int, state: Path) -> dict[str, float]:
    """One scenario in this process; returns the figures."""
    import tracemalloc

    from eventd.actions.base import ActionContext
    from eventd.actions.webhook import WebhookAction
    from eventd.delivery.dispatcher import Dispatcher
    from eventd.ops.metrics import Metrics
    from eventd.records import ActionJob
    from eventd.settings import Settings
    from eventd.stores.sqlite import SqliteStore

    url = _dead_url()
    store = SqliteStore(state)
    if scenario == "restart":
        for n in range(jobs):
            store.spool_add(_job(ActionJob, url, n))  # type: ignore[arg-type]
        store.close()
        store = SqliteStore(state)
    figures = {"rss_before_mib": _status("VmRSS")}
    tracemalloc.start()
    context = ActionContext(settings=Settings(), metrics=Metrics())
    hook = WebhookAction(context)
    dispatcher = Dispatcher(context, store, {"webhook": hook})
    dispatcher.start()
    if scenario == "live":
        for n in range(jobs):
            dispatcher.submit(_job(ActionJob, url, n))  # type: ignore[arg-type]
    time.sleep(3.0)  # let the lane retry against the dead target for a while
    current, peak = tracemalloc.get_traced_memory()
    figures.update(rss_after_mib=_status("VmRSS"), rss_peak_mib=_status("VmHWM"),
                   heap_now_mib=current / 2**20, heap_peak_mib=peak / 2**20,
                   spooled=float(store.spool_count()))
    dispatcher.close(2)
    hook.close()
    store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--code", type=Path, default=HERE.parent,
                        help="the checkout whose eventd is measured")
    parser.add_argument("--child", choices=("live", "restart"), help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.jobs, args.state)))
        return
    env = dict(os.environ, PYTHONPATH=str(args.code.resolve()))
    print(f"eventd from {args.code.resolve()}, {args.jobs:,} webhook actions, target down")
    for scenario in ("live", "restart"):
        with tempfile.TemporaryDirectory() as state:
            out = subprocess.run([sys.executable, __file__, "--child", scenario, "--jobs",
                                  str(args.jobs), "--state", state], env=env, check=True,
                                 capture_output=True, text=True, cwd=state).stdout
        fig = json.loads(out.strip().splitlines()[-1])
        print(f"  {scenario:8s} RSS {fig['rss_before_mib']:6.1f} -> {fig['rss_after_mib']:6.1f} MiB "
              f"(peak {fig['rss_peak_mib']:6.1f}); dispatcher heap now {fig['heap_now_mib']:6.1f} "
              f"MiB, peak {fig['heap_peak_mib']:6.1f} MiB; {fig['spooled']:,.0f} still spooled")


if __name__ == "__main__":
    main()
