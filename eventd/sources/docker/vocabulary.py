"""What Docker Engine events hold, for the typo warnings of `eventd check --source docker`.

From the Engine API's `GET /events` reference (object types and the actions each reports)
and the fields eventd adds (`mapping.ADDED_FIELDS`). A rule naming something outside it is
probably a typo, so `check` warns; an Engine may still send something newer one day.
"""

from __future__ import annotations

from eventd.sources.docker.mapping import ADDED_FIELDS, ENGINE_FIELDS

#: Top-level fields of a mapped event: the Engine's, its older ones, eventd's.
FIELDS: tuple[str, ...] = (
    *dict.fromkeys(f.split(".")[0] for f in ENGINE_FIELDS), "status", "id", "from",
    *(f for f in ADDED_FIELDS if f != "id"), "caused_by_eventd", "gap_seconds")

#: Each object type's actions (`action`, i.e. `Action` before any ':').
ACTIONS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "container": ("attach", "commit", "copy", "create", "destroy", "detach", "die",
                  "exec_create", "exec_detach", "exec_die", "exec_start", "export",
                  "health_status", "kill", "oom", "pause", "rename", "resize", "restart",
                  "start", "stop", "top", "unpause", "update", "prune"),
    "image": ("delete", "import", "load", "pull", "push", "save", "tag", "untag", "prune"),
    "volume": ("create", "mount", "unmount", "destroy", "prune"),
    "network": ("create", "connect", "disconnect", "destroy", "update", "remove", "prune"),
    "daemon": ("reload",),
    "plugin": ("enable", "disable", "install", "remove"),
    "node": ("create", "update", "remove"),
    "service": ("create", "update", "remove"),
    "secret": ("create", "update", "remove"),
    "config": ("create", "update", "remove"),
    "builder": ("prune",),
    "eventd": ("stream",),
}
TYPES: tuple[str, ...] = tuple(ACTIONS_BY_TYPE)
ACTIONS: tuple[str, ...] = tuple(dict.fromkeys(a for acts in ACTIONS_BY_TYPE.values() for a in acts))
#: The states an action reports after ': ' when they are a fixed set.
STATES: dict[str, tuple[str, ...]] = {
    "health_status": ("starting", "healthy", "unhealthy"),
    "stream": ("disconnected", "connected"),
}

#: As the rule checker takes it (eventd.ruleset.diagnostics.Vocabulary's fields): plain data,
#: so that this package never imports the ruleset.
VOCABULARY = {"reference": "the Engine API", "fields": FIELDS, "types": TYPES,
              "actions": ACTIONS, "states": STATES, "states_by": "action"}
