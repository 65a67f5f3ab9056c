"""build_console: the console's parts put together from what the daemon lends it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from eventd.console.app import Console
from eventd.console.live import LiveRing
from eventd.console.redact import Redactor, rule_variables
from eventd.console.views import ConsoleContext
from eventd.hooks import hooks
from eventd.ops.metrics import Metrics
from eventd.settings import Settings
from eventd.silences.book import SilenceBook
from eventd.stores.base import Store


def build_console(settings: Settings, store: Store, silences: SilenceBook | None,
                  environ: Mapping[str, str], *, secrets: Iterable[str],
                  rules: Callable[[], Any], reload: Callable[[], dict[str, Any]],
                  resume: Callable[[], object], replica: Callable[[], dict[str, Any]],
                  metrics: Metrics) -> Console:
    """The console, listening to the hooks from now on (until `close()`)."""
    live = LiveRing()
    hidden = [*secrets, *rule_variables(settings.rules, environ),
              *(value for value in (settings.ui_token, settings.store_password,
                                    settings.job_key) if value)]

    def matches(rule: str) -> float:
        return metrics.registry.get_sample_value("eventd_rule_matches_total",
                                                 {"rule": rule}) or 0.0

    ctx = ConsoleContext(settings=settings, store=store, silences=silences, live=live,
                         redactor=Redactor(hidden), rules=rules, reload=reload, resume=resume,
                         replica=replica, matches=matches, token=settings.ui_token,
                         metrics=metrics)
    return Console(ctx, on_close=hooks.subscribe(live))
