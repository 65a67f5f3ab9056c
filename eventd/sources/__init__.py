"""Where events come from: one subpackage per source (today the Docker Cloud Stream API).

A source connects, reads events, reports gaps and hands events to the engine. It may import
`eventd.events`, `eventd.errors`, `eventd.settings` and `eventd.ops`; never `ruleset`, `delivery`,
`commands` or `emulator`.
"""
