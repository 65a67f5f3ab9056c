"""Where events come from: one subpackage per source (today the Docker Cloud Stream API).

`base.py` holds the consumer loop every source runs (stop, backoff, gap events, replay of a
gap, restart cap, credentials policy, bad input counted) and the `SOURCES` registry by name;
a source subclasses `ConsumerLoop` and implements connect, consume (batches of events),
disconnect and `replay_since`. A source may import `eventd.events`, `eventd.errors`,
`eventd.settings` and `eventd.ops` (and `eventd.clients.http` for its HTTP session); never
`ruleset`, `commands` or `emulator`.
"""
