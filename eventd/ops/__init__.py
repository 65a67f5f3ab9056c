"""Operating eventd: metrics, health endpoints, logging set-up, the internal-error guard.

Owns what an operator sees of the process: `metrics` (every metric, labels bounded), `health`
(/metrics, /healthz, /readyz, bounded against slow clients), `logconfig` (text or JSON lines,
redacted, one record per line) and `internal` (the one "log, count, keep running" guard).
Imports only the standard library, prometheus-client, `eventd.errors` and `eventd.__version__`;
never the pipeline (`engine`, `sources`, `ruleset`, `delivery`, `actions`, `stores`), `commands`
or `emulator`: everything else may import it.
"""
