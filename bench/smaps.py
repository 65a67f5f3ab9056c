"""Where a process's resident memory lies: /proc/<pid>/smaps, mapping by mapping, per library.

`.venv/bin/python bench/smaps.py PID` prints a running eventd's resident set grouped by what
is mapped: each shared library (libpython, libcrypto, libssl, libsqlite3...), each Python
package's extension modules (yaml, orjson, charset_normalizer...), the standard library's
extension modules, the interpreter, and the anonymous memory (the Python heap: objects,
obmalloc arenas and malloc's; thread stacks apart). `bench/memprobe.py --smaps` prints the
same split for the daemon at the end of its run.

`.venv/bin/python bench/smaps.py --imports` starts a fresh interpreter and imports, one at a
time and in the order `eventd run` loads them, the libraries eventd uses; it prints how much
each adds (anonymous: the heap its modules build; file: the code it maps). Mappings say what
is resident; only the imports say which library built the heap.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

KIB_PER_MIB = 1024.0
HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")

#: The libraries `eventd run` has loaded once it streams and has made its first HTTP call
#: (its sys.modules with the bench's 100 rules; jsonschema is not among them: valid rule files
#: pass ruleset/quickcheck.py), one step of `--imports` each, in the order the daemon loads them.
IMPORTS = (
    "sys",
    "ssl, hashlib",
    "sqlite3",
    "yaml",
    "orjson",
    "jinja2, jinja2.sandbox",
    "prometheus_client",
    "wsgiref.simple_server",
    "websocket",
    "tenacity",
    "eventd.cli, eventd.daemon, eventd.pipeline",
    "requests",
)


@dataclass
class Group:
    """The mappings of one library (or of the anonymous memory), summed."""

    rss: int = 0
    pss: int = 0
    private: int = 0
    mappings: int = 0
    paths: set[str] = field(default_factory=set)


@dataclass
class Mapping:
    """One mapping of /proc/<pid>/smaps: what is mapped, and its counters in KiB."""

    path: str
    perms: str
    size_kib: int
    counters: dict[str, int] = field(default_factory=dict)


def read(pid: int | str) -> list[Mapping]:
    """Each mapping of /proc/<pid>/smaps."""
    mappings: list[Mapping] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        header = HEADER.match(line)
        if header:
            size = (int(header[2], 16) - int(header[1], 16)) // 1024
            mappings.append(Mapping(header[4].strip(), header[3], size))
            continue
        name, _, rest = line.partition(":")
        value = rest.split()
        if mappings and len(value) == 2 and value[1] == "kB":
            mappings[-1].counters[name] = int(value[0])
    return mappings


def label(mapping: Mapping, stack_kib: int) -> str:
    """The group a mapping belongs to: a library, a package, the heap, the thread stacks."""
    path = mapping.path
    if not path:
        if mapping.perms == "rw-p" and stack_kib - 4 <= mapping.size_kib <= stack_kib:  # less its guard
            return "anonymous: thread stacks"
        return "anonymous: Python heap (objects, obmalloc and malloc arenas)"
    if path == "[heap]":
        return "anonymous: [heap] (brk, malloc's main arena)"
    if path.startswith("["):
        return f"kernel: {path}"
    path = path.removesuffix(" (deleted)")
    name = Path(path).name
    site = re.search(r"/(?:site|dist)-packages/([^/]+)/", path)
    if site:
        return f"package: {site[1]}"
    if re.search(r"/(?:site|dist)-packages/[^/]+\.so$", path):
        return f"package: {name.split('.')[0]}"
    if "/lib-dynload/" in path:
        return f"stdlib extension: {name.split('.')[0]}"
    if ".so" in name:
        return "library: " + re.sub(r"(-[0-9.]+)?\.so.*$", "", name)
    if re.match(r"python3(\.\d+)?$", name):
        return "the interpreter (python3)"
    return f"file: {name}"


def split(pid: int | str) -> dict[str, Group]:
    """The resident memory of `pid`, grouped; keys as `label` names them."""
    stack_kib = _stack_kib()
    groups: dict[str, Group] = defaultdict(Group)
    for mapping in read(pid):
        group = groups[label(mapping, stack_kib)]
        counters = mapping.counters
        group.rss += counters.get("Rss", 0)
        group.pss += counters.get("Pss", 0)
        group.private += counters.get("Private_Clean", 0) + counters.get("Private_Dirty", 0)
        group.mappings += 1
        group.paths.add(mapping.path)
    return dict(groups)


def _stack_kib() -> int:
    """glibc's default thread stack: RLIMIT_STACK (8 MiB unless someone changed it)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return 8192 if soft in (resource.RLIM_INFINITY, -1) else soft // 1024


def report(pid: int | str, minimum_kib: int = 64) -> str:
    """The split as a table, largest first; groups under `minimum_kib` summed in one line."""
    groups = split(pid)
    total = sum(g.rss for g in groups.values())
    rows = sorted(groups.items(), key=lambda item: -item[1].rss)
    lines = [f"{'resident':>9} {'private':>8} {'pss':>8} {'maps':>5}  what (pid {pid})"]
    small = Group()
    for name, group in rows:
        if group.rss < minimum_kib:
            small.rss += group.rss
            small.private += group.private
            small.pss += group.pss
            small.mappings += group.mappings
            continue
        lines.append(_row(group, name))
    if small.mappings:
        lines.append(_row(small, f"everything under {minimum_kib} KiB each"))
    lines.append(f"{total / KIB_PER_MIB:8.2f}M {'':>8} {'':>8} {'':>5}  total resident "
                 f"(VmRSS {_status(pid, 'VmRSS') / KIB_PER_MIB:.2f} MiB, "
                 f"VmHWM {_status(pid, 'VmHWM') / KIB_PER_MIB:.2f} MiB)")
    return "\n".join(lines)


def _row(group: Group, name: str) -> str:
    return (f"{group.rss / KIB_PER_MIB:8.2f}M {group.private / KIB_PER_MIB:7.2f}M "
            f"{group.pss / KIB_PER_MIB:7.2f}M {group.mappings:5d}  {name}")


def _status(pid: int | str, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


IMPORTER = r'''
import importlib, sys
def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")}
before = status()
print("start", before["VmRSS"], before["RssAnon"], before["RssFile"], flush=True)
for step in sys.argv[1:]:
    for name in step.split(", "):
        importlib.import_module(name)
    now = status()
    print(step, now["VmRSS"], now["RssAnon"], now["RssFile"], flush=True)
'''


def imports(python: str, steps: tuple[str, ...] = IMPORTS) -> str:
    """A fresh interpreter imports `steps` one by one; what each added, as a table."""
    done = subprocess.run([python, "-X", "frozen_modules=on", "-c", IMPORTER, *steps],
                          capture_output=True, text=True, check=True, timeout=120)
    lines = [f"{'adds':>8} {'anon':>8} {'file':>8} {'VmRSS':>8}  import (a fresh {python})"]
    previous: list[int] | None = None
    for line in done.stdout.splitlines():
        step, rss, anon, file = line.rsplit(" ", 3)
        now = [int(rss), int(anon), int(file)]
        if previous is None:
            lines.append(f"{'':>8} {'':>8} {'':>8} {now[0] / KIB_PER_MIB:7.2f}M  "
                         "(the interpreter before any import of ours)")
        else:
            delta = [a - b for a, b in zip(now, previous, strict=True)]
            lines.append(f"{delta[0] / KIB_PER_MIB:+7.2f}M {delta[1] / KIB_PER_MIB:+7.2f}M "
                         f"{delta[2] / KIB_PER_MIB:+7.2f}M {now[0] / KIB_PER_MIB:7.2f}M  {step}")
        previous = now
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pid", nargs="?", help="the process to split (eventd run's pid)")
    parser.add_argument("--imports", action="store_true",
                        help="import eventd's libraries one by one in a fresh interpreter")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    if args.imports:
        print(imports(args.python))
    if args.pid:
        print(report(args.pid))
    if not args.imports and not args.pid:
        parser.error("give a PID, --imports, or both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
