"""Several namespaces from one deployment: names, event tagging, REST paths in a namespace.

`DOCKERCLOUD_NAMESPACE=acme,globex` gives one stream per namespace; each event is tagged
with the namespace it came from (`event["namespace"]`, as `caused_by_eventd` is added), and a
`dockercloud` action whose target has no namespace is called in that event's namespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from eventd.events import Received, events_of

#: the name (metric label, Redis key part) of the user's own namespace, when none is given;
#: no Docker ID or organisation name can contain parentheses, so it never clashes with one
OWN = "(own)"

Sink = Callable[[Sequence[Received]], None]

_UNNAMESPACED = re.compile(r"^/api/(?P<sub>app|infra)/v1/"
                           r"(?P<rest>(?:stack|service|container|nodecluster|node)(?:/.*)?)$")


def label(namespace: object) -> str:
    """The bounded name of a namespace for metrics and keys (`(own)` for the user's own, and
    for anything that is not a name: an event's own `namespace` key can be any JSON)."""
    return namespace if isinstance(namespace, str) and namespace else OWN


def tagging(sink: Sink, namespace: str | None) -> Sink:
    """A sink that marks every event with the namespace whose stream it came from."""
    if not namespace:
        return sink

    def tag(batch: Sequence[Received]) -> None:
        for event in events_of(batch):  # a Batch's own list: no Received built
            event["namespace"] = namespace
        sink(batch)

    return tag


def in_namespace(path: str, namespace: object) -> str:
    """`/api/app/v1/service/<uuid>/` -> `/api/app/v1/<namespace>/service/<uuid>/`.

    A path that already names a namespace, or one that is never namespaced (actions), is
    returned as it is; so is every path when `namespace` is not a name.
    """
    if not isinstance(namespace, str) or not namespace:
        return path
    match = _UNNAMESPACED.match(path)
    if match is None:
        return path
    return f"/api/{match['sub']}/v1/{namespace}/{match['rest']}"
