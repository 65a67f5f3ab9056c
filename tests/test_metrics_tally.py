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


def test_counts_assign_through_dicts_own_slot_and_still_count_as_a_counter() -> None:
    """`counts[key] = n` runs once per matched event on the engine's thread: with
    Counter's Python `__delitem__` in the class, CPython gave it the generic assignment
    slot (a type lookup and a wrapper call per assignment, ~900 instructions); both
    `__setitem__` and `__delitem__` must be dict's own for the slot to be dict's."""
    tally = Tally("eventd_t", "x", ("rule",))
    for counts in (tally.counts(rule_labels), tally.mine(),
                   tally.fold(tally.counts(rule_labels), rule_labels)):
        for name in ("__setitem__", "__delitem__"):
            assert getattr(type(counts), name) is getattr(dict, name), name
        counts["a"] += 1  # an absent key counts from 0, as a Counter's
        counts.update({"a": 2, "b": 1})
        both = (R("a"), R("b"))
        counts[both] = counts.get(both, 0) + 1
        assert (counts["a"], counts["b"], counts["never"], counts[both]) == (3, 1, 0, 1)
