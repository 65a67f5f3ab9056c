"""How eventd talks to the outside: the shared HTTP layer and the two APIs it acts on.

    http          sessions with timeouts and a User-Agent, status classification, no redirects
    dockercloud/  the Docker Cloud API: credentials (auth), REST calls (rest), namespaced paths
    docker        finding the Docker Engine as the docker CLI does, and naming its failures

Used by the sources (stream, backfill, enrichment) and by the action kinds alike, which is
why it sits below both. Imports only `errors`, `events`, `settings`, `ops` and the libraries;
never `actions`, `delivery`, `sources`, `engine`, `commands` or `emulator`.
"""

from eventd.clients import charset, metadata

charset.defer()  # before any client imports requests (docker-py does at its import): see charset.py
metadata.defer()  # before urllib3 (under requests) imports importlib.metadata: see metadata.py
