"""Rule matches counted once per event by the set of rules it matched, shown per rule."""

from __future__ import annotations

from collections import namedtuple

from prometheus_client import CollectorRegistry

from eventd.ops.metrics import Tally, rule_labels

R = namedtuple("R", "name")


def test_a_tuple_of_matched_rules_counts_once_for_each_of_them_and_survives_a_fold() -> None:
    registry = CollectorRegistry()
    tally = Tally("eventd_rule_matches", "x", ("rule",), registry=registry)
    counts = tally.counts(rule_labels)
    a, b, c = R("a"), R("b"), R("c")
    for _ in range(5):
        counts[(a, b)] += 1
    counts["a"] += 2
    counts[(a, b, c)] += 3

    def value(rule: str) -> float | None:
        return registry.get_sample_value("eventd_rule_matches_total", {"rule": rule})

    assert (value("a"), value("b"), value("c")) == (10, 8, 3)
    counts = tally.fold(counts, rule_labels)
    assert set(counts) == {"a", "b", "c"}
    counts[(b, c)] += 1
    assert (value("a"), value("b"), value("c")) == (10, 9, 4)
