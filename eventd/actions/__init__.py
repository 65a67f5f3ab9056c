"""The action kinds, one module each, and their registry: a plain dict from the name used in
rules to the class.

Kinds are imported lazily so that a rule file naming one kind never imports the others. Each
kind declares its capabilities as class attributes (`durable`, `per_event`,
`acts_on_objects`; see `base.ActionKind`), which the engine and the dispatcher read instead of
testing kind names. Kinds use `records`, `errors`, `events`, `files`, `ops`, `guards` (loop
guard, call limits) and `clients` (the shared HTTP layer, the Docker Cloud REST client, the
Engine client); never `delivery`, `sources`, `engine`, `ruleset`, `commands` or `emulator`.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

ACTIONS: dict[str, str] = {
    "log": "eventd.actions.log:LogAction",
    "webhook": "eventd.actions.webhook:WebhookAction",
    "alertmanager": "eventd.actions.alertmanager:AlertmanagerAction",
    "dockercloud": "eventd.actions.dockercloud:DockerCloudAction",
    "audit": "eventd.actions.audit:AuditAction",
    "docker": "eventd.actions.docker:DockerAction",
    "postgres": "eventd.actions.postgres:PostgresAction",
    "nats": "eventd.actions.nats:NatsAction",
    "mqtt": "eventd.actions.mqtt:MqttAction",
    "amqp": "eventd.actions.amqp:AmqpAction",
    "pagerduty": "eventd.actions.pagerduty:PagerDutyAction",
    "slack": "eventd.actions.slack:SlackAction",
    "opsgenie": "eventd.actions.opsgenie:OpsgenieAction",
    "msteams": "eventd.actions.msteams:MsTeamsAction",
}


class UnknownActionKind(KeyError):
    """A rule names an action kind that is not registered."""

    def __init__(self, name: str) -> None:
        self.name = name
        close = difflib.get_close_matches(name, ACTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.message = f"unknown action kind {name!r}{hint}; known: {', '.join(sorted(ACTIONS))}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def resolve(name: str) -> Any:
    """Return the class registered for `name`, or raise UnknownActionKind with a suggestion."""
    try:
        path = ACTIONS[name]
    except KeyError:
        raise UnknownActionKind(name) from None
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
