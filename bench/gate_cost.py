"""Instructions the gate costs per durable job, against the JSON every store already writes.

    valgrind --tool=callgrind .venv/bin/python bench/gate_cost.py gate 2000
    valgrind --tool=callgrind .venv/bin/python bench/gate_cost.py dump 2000
    valgrind --tool=callgrind .venv/bin/python bench/gate_cost.py gate 0      # start-up only

(Collected(N=2000) - Collected(N=0)) / 2000 is the cost per job: `gate` signs the job (at
acceptance) and checks it (before an attempt: its MAC, its rule); `dump` is the store's own
`json.dumps(job.to_dict())`. The job is a container-crashed webhook on a Docker Cloud event.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventd.delivery.gate import Gate, Grant, Policy  # noqa: E402
from eventd.delivery.signing import JobSigner  # noqa: E402
from eventd.ops.metrics import Metrics  # noqa: E402
from eventd.records import ActionJob  # noqa: E402

EVENT = {"type": "container", "action": "update", "state": "Stopped",
         "resource_uri": "/api/app/v1/user/container/c1dd4e1e-1356-411c-8613-e15146633640/",
         "parents": ["/api/app/v1/user/service/09cbcf8d-a727-40d9-b420-c8e18b7fa55b/",
                     "/api/app/v1/user/stack/46aca402-2109-4a70-a378-760cfed43816/"],
         "uuid": "6a1f0e52-7c1e-4d8e-9a55-0b9c3f1e2a01", "datetime": "2016-06-01T10:15:02Z"}


def main(mode: str, count: int) -> None:
    job = ActionJob(id="a" * 32, rule="container-crashed", kind="webhook",
                    options={"url": "https://hooks.example/x",
                             "json": {"text": "container web-1 crashed: exit code 1",
                                      "service": EVENT["parents"][0], "at": EVENT["datetime"]}},
                    event=EVENT, target="webhook:https://hooks.example:443", created_at=time.time())
    gate = Gate(Policy(), Metrics(), signer=JobSigner(b"k" * 32, "bench"), rules={
        "container-crashed": (Grant("webhook", {"url": "https://hooks.example/x"},
                                    frozenset({"url", "json", "group"}),
                                    "webhook:https://hooks.example:443"),)})
    for _ in range(count):
        if mode == "dump":
            json.dumps(job.to_dict(), separators=(",", ":"), default=str)
        else:
            gate.sign(job)
            gate.check_job(job, durable=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
