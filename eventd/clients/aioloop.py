"""One asyncio event loop in a thread of its own, for the clients that are asyncio only
(nats-py, aio-pika): lane workers are threads, and hand it coroutines with `run`.

Made on first use and shared by every kind that needs it, so two bus kinds cost one thread,
and a daemon whose rules name neither pays nothing: asyncio itself (1.5 MiB) is imported only
when the loop is made.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_shared: AsyncLoop | None = None


class LoopTimeout(TimeoutError):
    """A coroutine handed to the loop did not finish in time (it was cancelled)."""


class AsyncLoop:
    """An event loop running forever in a daemon thread."""

    def __init__(self, name: str = "eventd-asyncio") -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the loop and wait for its result; LoopTimeout (after cancelling it)
        if it takes longer than `timeout`."""
        import asyncio

        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LoopTimeout(f"no answer within {timeout:g} s") from None

    def close(self, closing: Callable[[], Coroutine[Any, Any, Any]],
              timeout: float = 5.0) -> Any:
        """Run a connection's `closing()` on the loop. From any other thread it is waited for
        (errors ignored: the connection is dead either way); from a coroutine of this loop (a
        connection dropped in the middle of a send) it is started as a task and the task is
        returned, for the caller to keep referenced: waiting there would wait on ourselves."""
        import asyncio

        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return running.create_task(closing())
        try:
            self.run(closing(), timeout)
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
        return None

    def alive(self) -> bool:
        return self._thread.is_alive()


def shared_loop() -> AsyncLoop:
    """The process's one loop thread, started on first use."""
    global _shared
    with _lock:
        if _shared is None or not _shared.alive():
            _shared = AsyncLoop()
        return _shared
