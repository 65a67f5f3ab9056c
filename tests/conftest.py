"""Shared fixtures: real servers on 127.0.0.1, fresh metric registries, the internal-error guard.

Real Prometheus and Alertmanager fixtures live in tests/external.py and are re-exported here,
as are Redis' (`redis_url`, `redis_cluster`) from tests/redis_server.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventd.ops.metrics import Metrics
from tests.docker_engine import docker_client, docker_engine  # noqa: F401  (fixtures)
from tests.external import (  # noqa: F401  (fixtures, found by pytest under these names)
    alertmanager,
    alertmanager_webhook_url,
    prometheus,
    prometheus_alertmanager_url,
    prometheus_rule_files,
    prometheus_targets,
)
from tests.postgres_server import pg_table  # noqa: F401  (fixture, as above)
from tests.receiver import WebhookReceiver
from tests.redis_server import redis_cluster, redis_url  # noqa: F401  (fixtures, as above)
from tests.store_fixtures import store_and_reopen  # noqa: F401  (every store, as above)


@pytest.fixture
def metrics() -> Metrics:
    """A Metrics object on a fresh registry: assert with `metrics.registry.get_sample_value`."""
    return Metrics()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A real HTTP receiver that records requests and answers as scripted."""
    receiver = WebhookReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def emulator() -> Iterator[object]:
    """The Docker Cloud emulator on ephemeral ports, with fast world ticks."""
    from eventd.emulator import Emulator

    emu = Emulator(tick=0.02)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(autouse=True)
def internal_errors() -> Iterator[list[tuple[str, BaseException]]]:
    """Fail any test during which eventd's keep-running guard caught an unexpected error.

    A test that provokes one on purpose takes this fixture and clears the list.
    """
    from eventd.ops.internal import set_test_hook

    caught: list[tuple[str, BaseException]] = []
    set_test_hook(lambda where, exc: caught.append((where, exc)))
    try:
        yield caught
    finally:
        set_test_hook(None)
    if caught:
        where, exc = caught[0]
        raise AssertionError(f"internal error in {where}: {exc!r}") from exc
