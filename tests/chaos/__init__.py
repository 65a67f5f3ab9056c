"""Jepsen-style tests of the cluster: a test network, a nemesis and a checker that reads history.

- `netns`: the test network. Every replica, Redis (and its Sentinel), the emulator and the
  webhook receiver is a host of its own: a network namespace on one bridge, addresses in
  10.250.0.0/24 only inside the namespaces the test made, all removed at the end.
- `hosts`: what runs on those hosts (redis-server, Sentinel, `eventd run`, the in-process
  emulator and receiver, whose sockets are made inside their namespaces).
- `recorder`: the history the servers keep (Redis' MONITOR: leases and accepted jobs) and the
  load (events at a steady rate, webhook and REST rules).
- `nemesis`: the faults (partitions, one-way drops, SIGSTOP, kill -9, Redis restart, Sentinel
  failover) and a seeded random schedule of them.
- `history` and `checker`: what happened, saved as a directory, and the properties checked
  on it (one consumer per namespace, gaps announced and backfilled, nothing accepted lost,
  per-target order, no request without the lease).
- `run`: one run from topology to verdicts; `python -m tests.chaos` is `make chaos`.
"""
