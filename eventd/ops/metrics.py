"""Every metric eventd exports, built against an injected registry, labels bounded.

Labels never hold a uuid, a URL or free text: `type` is cut to the documented event types
(anything else counts as `other`), `rule` names come from the operator's own files.
Hot paths bind label children once (`events_received_for(type)`), since `.labels()` costs
about a microsecond per call.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from eventd import __version__

#: Event types that get their own label value; anything else is `other`.
KNOWN_TYPES = frozenset(
    {"stack", "service", "container", "nodecluster", "node", "action", "error", "auth",
     "eventd", "image", "buildsetting", "user-notification",
     # the Docker Engine's object types (the docker source)
     "network", "volume", "daemon", "plugin", "config", "secret"}
)
OUTCOMES = ("success", "retry", "failed", "deadletter", "throttled", "skipped", "shadow", "grouped")
ACTION_KINDS = ("log", "webhook", "alertmanager", "dockercloud", "audit", "docker")
INVALID_REASONS = ("not_json", "not_object", "missing_type")
RECONNECT_REASONS = ("dropped", "closed", "pong_timeout", "idle", "protocol_error",
                     "connect_timeout", "connect_error", "auth_rejected")


class Metrics:
    """The metric families of one daemon; tests build one per test with a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_received = Counter(
            "eventd_events_received", "Events received from the stream (and eventd's own), by type",
            ["type"], registry=r)
        self.events_invalid = Counter(
            "eventd_events_invalid", "Frames skipped because they are not usable events, by reason",
            ["reason"], registry=r)
        self.events_duplicate = Counter(
            "eventd_events_duplicate", "Events dropped because their uuid was already processed",
            registry=r)
        self.stream_errors = Counter(
            "eventd_stream_error_messages", "`error` messages received on the stream", registry=r)
        self.stream_connected = Gauge(
            "eventd_stream_connected", "1 while the stream websocket is connected", registry=r)
        self.stream_reconnects = Counter(
            "eventd_stream_reconnects", "Stream connections lost or refused, by reason",
            ["reason"], registry=r)
        self.stream_last_event = Gauge(
            "eventd_stream_last_event_timestamp_seconds",
            "When the last frame arrived (POSIX time)", registry=r)
        self.stream_backfilled = Counter(
            "eventd_stream_backfilled_events", "Action events recovered over REST after a gap",
            registry=r)
        self.stream_backfill_outside_gap = Counter(
            "eventd_stream_backfill_outside_gap",
            "Actions a backfill listing returned from outside the gap, discarded", registry=r)
        self.rule_matches = Counter(
            "eventd_rule_matches", "Events matched, by rule", ["rule"], registry=r)
        self.actions = Counter(
            "eventd_actions", "Action attempts and decisions, by kind and outcome",
            ["kind", "outcome"], registry=r)
        self.action_duration = Histogram(
            "eventd_action_duration_seconds", "Time one action attempt took, by kind", ["kind"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r)
        self.action_errors = Counter(
            "eventd_action_errors", "Action failures, by kind and reason", ["kind", "reason"],
            registry=r)
        self.dropped = Counter(
            "eventd_dropped", "Work eventd lost on purpose, by action kind and reason",
            ["kind", "reason"], registry=r)
        self.spool_pending = Gauge(
            "eventd_spool_pending", "Accepted actions not yet delivered or dead-lettered", registry=r)
        self.store_up = Gauge(
            "eventd_store_up", "1 while the store answers (0: Redis unreachable)", registry=r)
        self.store_up.set(1)
        self.store_errors = Counter(
            "eventd_store_errors", "Store operations that failed, by operation", ["op"], registry=r)
        self.deadletter = Counter(
            "eventd_deadletter", "Actions moved to dead letters", registry=r)
        self.rules_loaded = Gauge(
            "eventd_rules_loaded", "Rules in the active rule set", registry=r)
        self.rules_reload_success = Gauge(
            "eventd_rules_reload_success", "1 if the last rule (re)load succeeded", registry=r)
        self.rules_reloads = Counter(
            "eventd_rules_reloads", "Rule reloads, by result", ["result"], registry=r)
        self.template_errors = Counter(
            "eventd_template_errors", "Templates that failed to render, by rule", ["rule"],
            registry=r)
        self.internal_errors = Counter(
            "eventd_internal_errors", "Unexpected errors caught so the daemon keeps running, by where",
            ["where"], registry=r)
        self.source_info = Gauge(
            "eventd_source_info", "1 for the source this daemon reads events from", ["source"],
            registry=r)
        self.alerts_active = Gauge(
            "eventd_alerts_active", "Alerts eventd is firing (re-sent until resolved or expired)",
            registry=r)
        self.groups_open = Gauge(
            "eventd_groups_open", "Digest groups collecting events (a grouped webhook)", registry=r)
        self.build_info = Gauge(
            "eventd_build_info", "eventd's version", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.rules_reload_success.set(0)
        self.stream_connected.set(0)
        self.spool_pending.set(0)
        # Children created up front, so dashboards and alerts see 0 rather than no series.
        for kind in ACTION_KINDS:
            self.action_duration.labels(kind=kind)
            for outcome in OUTCOMES:
                self.actions.labels(kind=kind, outcome=outcome)
        for reason in INVALID_REASONS:
            self.events_invalid.labels(reason=reason)
        for reason in RECONNECT_REASONS:
            self.stream_reconnects.labels(reason=reason)
        for event_type in ("stack", "service", "container", "nodecluster", "node", "action", "eventd"):
            self.events_received.labels(type=event_type)
        self._received_children: dict[str, object] = {}

    def rules_loaded_now(self, names: list[str]) -> None:
        """A rule set took effect: show its size and a zero match count for each rule."""
        self.rules_loaded.set(len(names))
        for name in names:
            self.rule_matches.labels(rule=name)

    def event_type_label(self, event_type: object) -> str:
        """Bound the `type` label to known types."""
        return event_type if isinstance(event_type, str) and event_type in KNOWN_TYPES else "other"

    def count_received(self, event_type: object) -> None:
        """Count one received event, binding the label child once per type."""
        label = self.event_type_label(event_type)
        child = self._received_children.get(label)
        if child is None:
            child = self.events_received.labels(type=label)
            self._received_children[label] = child
        child.inc()  # type: ignore[attr-defined]
