"""What the audit trail's hash chain costs per audited event, in instructions (callgrind).

`python bench/chain_cost.py [--records 20000]` runs this file under
`valgrind --tool=callgrind` four times: writing N records to an audit file as eventd does
now (`chained`: seq and prev added, canonical JSON with sorted keys, SHA-256 of the line) and
as it did before the chain (`plain`: `orjson.dumps(record, default=str)`, unsorted, no hash, through
AuditFile.write as it was at 1c8f7e3),
each with N records and with none (what importing and opening cost); the difference divided by
N is the cost per record. Records are the audit action's own (`AuditAction.record`) for a
Docker Cloud event. Prints a markdown row.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, records: int, directory: str) -> None:
    """Write `records` audit records the `mode` way (run under callgrind)."""
    sys.path.insert(0, str(ROOT))
    import orjson

    from eventd.actions.audit import AuditAction, AuditFile
    from eventd.actions.base import ActionContext
    from eventd.actions.chain import Head
    from eventd.ops.metrics import Metrics
    from eventd.records import ActionJob
    from eventd.settings import Settings

    action = AuditAction(ActionContext(settings=Settings(), metrics=Metrics()))
    event = {"type": "container", "action": "update", "state": "Stopped",
             "resource_uri": "/api/app/v1/acme/container/c1dd4e1e-1356-411c-8613-e15146633640/",
             "parents": ["/api/app/v1/acme/service/09cbcf8d-a727-40d9-b420-c8e18b7fa55b/",
                         "/api/app/v1/acme/stack/46aca402-2109-4a70-a378-760cfed43816/"],
             "uuid": "6a1f0e52-7c1e-4d8e-9a55-0b9c3f1e2a01", "datetime": "2016-06-01T10:15:02Z"}
    job = ActionJob(id="x", rule="audit-all", kind="audit", options={}, event=event,
                    target="audit", created_at=1.0, context={
                        "received_at": 1700000000.25, "rules": ["audit-all", "crash"],
                        "actions": [{"rule": "crash", "kind": "webhook",
                                     "status": "accepted"}]})
    path = Path(directory) / f"{mode}.jsonl"
    audit = AuditFile(path, fsync=1000)
    if mode == "chained":
        for _ in range(records):
            audit.write(action.record(job))
    else:
        audit.head = Head()  # nothing to recover: the plain file has no chain
        for _ in range(records):
            old_write(audit, orjson.dumps(action.record(job), default=str) + b"\n")
    audit.close()


def old_write(audit: Any, line: bytes) -> None:
    """AuditFile.write as it was before the chain (at 1c8f7e3): the line built outside."""
    handle = audit._file or audit._open()
    if audit.size and audit.size + len(line) > audit.rotate_bytes:
        handle = audit._rotate()
    handle.write(line)
    audit.size += len(line)
    audit.lines += 1
    audit._unsynced = True
    if audit.always:
        audit._sync()
    elif audit._clock() - audit._last_sync >= audit.interval:
        audit._sync()


def instructions(mode: str, records: int, directory: str) -> int:
    out = Path(directory) / f"callgrind.{mode}.{records}"
    done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                           sys.executable, __file__, "--child", mode, "--records", str(records),
                           "--dir", directory], capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise SystemExit(f"no instruction count in valgrind's output: {done.stderr[-500:]}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--child", choices=("chained", "plain"))
    parser.add_argument("--dir")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.records, args.dir)
        return 0
    with tempfile.TemporaryDirectory(prefix="eventd-chain-") as directory:
        per = {}
        for mode in ("plain", "chained"):
            base = instructions(mode, 0, directory)
            full = instructions(mode, args.records, directory)
            per[mode] = (full - base) / args.records
            print(f"{mode}: {per[mode]:,.0f} instructions per record", file=sys.stderr)
    extra = per["chained"] - per["plain"]
    print(f"| audit hash chain: instructions per audited event, callgrind, {args.records:,} "
          f"records (chained {per['chained']:,.0f} vs plain {per['plain']:,.0f}) | "
          f"+{extra:,.0f} ({extra / per['plain']:+.0%} of the record's write) | - | - | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
