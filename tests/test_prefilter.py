"""The prefilter only ever rules out what the full predicate would reject: compare with a scan."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.ruleset.index import RuleSet
from tests.test_matching import make_rule

PARENTS = [f"/api/app/v1/ns/service/s{i}/" for i in range(5)] + ["/api/app/v1/service/s1/"]
URIS = [f"/api/app/v1/ns/container/c{i}/" for i in range(5)] + ["/api/app/v1/team-7/container/x/"]


def random_match(rng: random.Random) -> dict:
    match: dict = {"type": "container"}
    choice = rng.randrange(10)
    if choice == 0:
        match["parents"] = rng.choice(PARENTS)
    elif choice == 1:
        match["resource_uri"] = {"regex": rng.choice(["^/api/app/v1/team-7/", "c3/$", "(?i)C2",
                                                      "zz[0-9]+"])}
    elif choice == 2:
        match["resource_uri"] = {"glob": rng.choice(["*/container/c1*", "*team-?/*", "*",
                                                     "*[0-9]/"])}
    elif choice == 3:
        match["data.errorMessage"] = {"exists": True}
    elif choice == 4:
        match["parents"] = {"glob": "*/service/s2/"}
    elif choice == 5:
        match["state"] = rng.choice(["Running", "Stopped"])
        match["parents"] = {"regex": "s[34]/$"}
    elif choice == 6:
        match["any"] = [{"resource_uri": {"regex": "c1"}}, {"parents": PARENTS[0]}]
    elif choice == 7:
        match["resource_uri"] = {"glob": "*/c4/", "not": "/api/app/v1/ns/container/c4/"}
    elif choice == 8:  # a group test that is the rule's whole condition, or almost
        match.update(rng.choice([
            {"parents": {"glob": "*/service/s3*"}}, {"parents": {"glob": "*service/s*"}},
            {"resource_uri": {"glob": "*container/c[12]*"}}, {"resource_uri": {"glob": "*/c1/*"}},
            {"data.errorMessage": {"exists": True, "not": "x"}},
            {"parents": PARENTS[1], "resource_uri": {"glob": "*/c1*"}},
            {"parents": {"glob": "*/service/s1*"}, "state": "Running"}]))
        if rng.random() < 0.3:
            del match["type"]
    return match


def random_event(rng: random.Random) -> dict:
    event: dict = {"type": "container", "action": "update",
                   "state": rng.choice(["Running", "Stopped", "Starting"])}
    if rng.random() < 0.9:
        event["resource_uri"] = rng.choice(URIS + [5, None])
    if rng.random() < 0.9:
        event["parents"] = rng.sample(PARENTS, rng.randrange(4)) + rng.choice([[], [PARENTS[0]], [7]])
    if rng.random() < 0.3:
        event["data"] = rng.choice([{"errorMessage": "x"}, {"errorMessage": None}, {}, "text"])
    return event


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_large_rule_sets_match_exactly_like_a_full_scan(seed: int) -> None:
    rng = random.Random(seed)
    rules = RuleSet([make_rule(f"r{i}", random_match(rng)) for i in range(300)])
    for _ in range(3000):
        event = random_event(rng)
        expected = [r.name for r in rules.rules if r.compiled.predicate(event)]
        assert [r.name for r in rules.match(event)] == expected, event


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_any_rule_set_matches_exactly_like_a_full_scan(seed: int) -> None:
    rng = random.Random(seed)
    rules = RuleSet([make_rule(f"r{i}", random_match(rng)) for i in range(rng.randrange(1, 120))])
    for _ in range(200):
        event = random_event(rng)
        expected = [r.name for r in rules.rules if r.compiled.predicate(event)]
        assert [r.name for r in rules.match(event)] == expected, event
