"""Alerting that Alertmanager and chat users can trust: firing alerts and digest groups.

- `firing`: the `alertmanager` action's alerts, kept in the store while they fire, re-sent every
  `--alert-resend` with `endsAt` ahead of now, resolved by a `resolve: true` action, expired
  after `expire`.
- `groups`: a grouped `webhook` collects the events whose `group.by` renders alike, in the
  store, and is accepted into the spool as one action when its group closes.
- `ticker`: the one thread that re-sends, expires and closes on time.

Imports `actions` (the job record, a digest's limits), `stores.base` (the roles) and
`stores.backpressure` (waiting for an unreachable store), `ops`, `events`,
`settings` (durations) and `ruleset.templates` (the context of a closing group); never
`engine`, `delivery`, `commands` or `emulator`: what it accepts goes to a submit function.
"""
