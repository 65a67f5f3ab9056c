"""Silences: "mute these actions for a while", as Alertmanager's silences, kept in the store.

- `model`: a silence (matchers on rule, action kind, event fields and alert labels; a start,
  an end, a creator, a comment), parsed and validated from untrusted input (the CLI, the
  console's HTTP API, a record read back from the store).
- `regex`: matchers' regular expressions, compiled with RE2 (linear time, no backtracking).
- `book`: the silences in force, refreshed from the store (shared by a cluster's replicas),
  and the one cheap check the engine makes per matched action.

A leaf: the pipeline hands the book to the engine as its `Muter`, the console and the
`silence` command use it; it imports `stores.base`, `fields`, `ops` and the standard library,
never `engine`, `pipeline`, `console`, `commands` or `emulator`.
"""
