"""The Docker Cloud source: Stream API websocket, framing, backfill, enrichment, recorder.

The API client it shares with the `dockercloud` action (auth, REST, namespaces) lives in
`eventd.clients.dockercloud`. Never imports `actions`, `delivery`, `commands` or `emulator`.
"""
