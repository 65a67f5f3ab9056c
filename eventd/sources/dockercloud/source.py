"""The Docker Cloud entry of the SOURCES registry: a StreamConsumer built from the settings."""

from __future__ import annotations

from eventd.sources.base import SourceContext
from eventd.sources.dockercloud.backfill import Backfiller, backfill_backoff
from eventd.sources.dockercloud.stream import StreamConsumer, StreamOptions


def build(context: SourceContext) -> StreamConsumer:
    """The stream consumer, backfilling gaps over REST when a REST client is given."""
    if context.credentials is None:
        raise ValueError("the dockercloud source needs credentials")
    backfill = Backfiller(context.rest, context.sink, context.metrics, stopping=context.stopping,
                          backoff=backfill_backoff(context.settings)) \
        if context.rest is not None else None
    return StreamConsumer(
        url=context.settings.stream_url, credentials=context.credentials, sink=context.sink,
        metrics=context.metrics, stopping=context.stopping,
        options=StreamOptions.from_settings(context.settings), recorder=context.recorder,
        backfill=backfill)
