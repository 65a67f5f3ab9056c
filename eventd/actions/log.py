"""The `log` action kind: one log line per match, on logger `eventd.actions.log`."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from eventd.actions.base import ActionContext
from eventd.outbound import Address, Call, Outbound
from eventd.records import ActionJob

logger = logging.getLogger(__name__)

_LOG_LINE = Outbound(kind="log", policy="local",
                     calls=(Call("append", Address("log", path=__name__)),))
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class LogAction:
    """Write the rendered `message` at `level`; in-memory and cheap, so not durable."""

    name: ClassVar[str] = "log"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["message"],
        "additionalProperties": False,
        "properties": {
            "message": {"type": "string", "description": "A template."},
            "level": {"enum": list(LEVELS), "default": "info"},
        },
    }
    durable: ClassVar[bool] = False
    per_event: ClassVar[bool] = False
    acts_on_objects: ClassVar[bool] = False

    def __init__(self, context: ActionContext | None = None) -> None:
        self.context = context

    @classmethod
    def validate(cls, options: dict[str, Any]) -> list[str]:
        """Nothing beyond the schema."""
        return []

    def inactive(self, options: dict[str, Any]) -> bool:
        """True when the line would not be written: the engine then skips rendering it."""
        level = LEVELS.get(options.get("level", "info"))
        return level is not None and not logger.isEnabledFor(level)

    def target(self, options: dict[str, Any]) -> str:
        """Every log line goes through one queue."""
        return "log"

    def describe(self, job: ActionJob) -> str:
        """The logger written to."""
        return "log"

    def flush(self) -> None:
        """Nothing buffered."""

    def prepare(self, job: ActionJob) -> Outbound:
        """A line on eventd's own log (the gate's `local` policy)."""
        return _LOG_LINE

    def send(self, job: ActionJob, outbound: Outbound) -> str:
        """Log the message with the rule's name."""
        level = LEVELS.get(job.options.get("level", "info"), logging.INFO)
        if logger.isEnabledFor(level):
            logger.log(level, "rule %s: %s", job.rule, job.options.get("message", ""))
        return "logged"

    def close(self) -> None:
        """Nothing to release."""
