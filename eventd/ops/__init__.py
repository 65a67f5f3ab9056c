"""Operating eventd: metrics, health endpoints, logging set-up, the internal-error guard.

Owns what an operator sees of the process. Imports only the standard library, prometheus-client
and `eventd.errors`; never the pipeline (`engine`, `sources`, `delivery`), `commands` or `emulator`.
"""
