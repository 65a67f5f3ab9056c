"""The `docker` entry of the SOURCES registry: check the Engine once, then consume its events.

An Engine that is not there, or refuses, at start is a configuration problem (ConfigError:
one clear line, exit 2); once it has worked, the loop retries it with backoff.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from eventd.backoff import Backoff
from eventd.clients.docker import describe_failure, make_client, safe_address
from eventd.errors import ConfigError
from eventd.sources.base import LoopOptions, SourceContext
from eventd.sources.docker.consumer import EngineEvents

if TYPE_CHECKING:
    from eventd.settings import Settings

logger = logging.getLogger(__name__)


def check_engine(settings: Settings) -> str:
    """GET /version and /info once; the Engine's description, or ConfigError saying why not."""
    address = safe_address(settings.docker_host)
    try:
        client = make_client(settings)
        try:
            info = client.info()
            version = client.version()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - every docker-py failure is described
        failure = describe_failure(exc)
        raise ConfigError(f"cannot use the Docker Engine at {address}: {failure.detail}") from None
    return (f"Docker Engine {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}, "
            f"{info.get('Name', '?')}) at {address}")


def build(context: SourceContext) -> EngineEvents:
    """The Engine's event consumer, after checking the Engine answers."""
    settings = context.settings
    logger.info("source docker: %s", check_engine(settings))
    options = LoopOptions(backoff=Backoff(settings.backoff_initial, settings.backoff_max),
                          healthy_after=settings.healthy_after)
    return EngineEvents(settings.docker_host, partial(make_client, settings), context.sink,
                        context.metrics, context.stopping, options,
                        ping_interval=settings.ping_interval, ping_timeout=settings.pong_timeout,
                        recorder=context.recorder)
