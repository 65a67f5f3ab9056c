"""Several replicas sharing the work through Redis: leases, membership, stream assignment.

`leases` keeps one lease per namespace's stream (with a fencing token), `membership` the
replicas' heartbeats, `coordinator` decides which streams this replica consumes and moves
them when replicas come and go, `streams` runs one stream consumer per namespace held,
`progress` keeps when each stream's last event was processed (a new owner's gap starts
there), `status` reads it all back for `eventd status`. Imports the sources, `ops`,
`settings` and redis-py; never `commands` or the emulator.
"""
