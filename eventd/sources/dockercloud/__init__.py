"""The Docker Cloud source: Stream API websocket, REST client, auth, backfill, enrichment.

Everything that knows Docker Cloud's URLs, headers and event shapes lives here (and in the
`dockercloud` action, which uses `rest`). Never imports `commands` or `emulator`.
"""
