"""The console: the page an on-call person opens on the metrics port (`/ui/`) and its HTTP API.

- `app`: the WSGI app mounted beside /metrics (eventd.ops.health), routes, security headers.
- `api`: the JSON endpoints (`/api/v1/...`), as `openapi.json` describes them.
- `auth`: who may act: a bearer token (EVENTD_UI_TOKEN / _FILE), CSRF checks; reading needs none.
- `live`: the bounded ring of the last events, with the rules each matched and what each action
  did, fed by `eventd.hooks` on the engine's thread at the cost of an append.
- `views`: rules, dead letters, silences and the cluster as the API shows them.
- `redact`: nothing secret leaves: headers, tokens, `${VAR}` values and credentials masked.
- `static/`: the page itself (plain HTML, CSS and JavaScript, no build step, no CDN).

A leaf: only the daemon mounts it. It reads the store, the hooks, the silences' book, the
rules in force and the cluster's status; it imports `silences`, `cluster`, `ruleset`,
`stores`, `ops`, `hooks` and the records, never `pipeline`, `daemon`, `commands` or `emulator`.
"""
