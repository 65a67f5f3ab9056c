"""The Docker Engine as a source: its `/events` stream read through the Docker SDK (docker-py).

`mapping` turns an Engine event into the event rules see (the Engine's keys kept as they come,
plus `type`, `action`, `state`, `id`, `name`, `attributes`, `resource_uri`, `uuid`,
`datetime`); `eventd.clients.docker` finds the Engine as the docker CLI does and names
what went wrong;
`consumer` runs the shared consumer loop on the stream (replay through `since`, gap events
only when the Engine cannot replay); `enrich` inspects the object an event is about.
Imports `eventd.events`, `eventd.errors`, `eventd.settings`, `eventd.ops` and
`eventd.sources.base`; never `ruleset`, `delivery`, `commands` or `emulator`.
"""
