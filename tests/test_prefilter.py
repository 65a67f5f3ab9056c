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


# -- the plans' remembered answers (MatchCache): keyed by the sender's values --------------

HOSTILE_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.floats(allow_nan=True)
    | st.sampled_from(PARENTS + URIS + ["", "x" * 5000]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["errorMessage", "a"]), inner, max_size=2),
    max_leaves=6)


def hostile_event(draw: st.DrawFn) -> dict:
    event: dict = {"type": "container", "action": "update",
                   "state": draw(st.sampled_from(["Running", "Stopped"]))}
    for field in ("parents", "resource_uri", "data"):
        if draw(st.booleans()):
            event[field] = draw(HOSTILE_VALUES)
    return event


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.composite(hostile_event)(), min_size=1, max_size=12))
def test_remembered_answers_are_the_full_scans_whatever_the_values(
        seed: int, events: list[dict]) -> None:
    """Values of any type (unhashable lists and dicts, numbers beside booleans: 1 == True,
    huge strings), each event matched three times (kept the second, answered the third)."""
    rng = random.Random(seed)
    rules = RuleSet([make_rule(f"r{i}", random_match(rng)) for i in range(rng.randrange(8, 60))]
                    + [make_rule("one", {"type": "container", "parents": 1}),
                       make_rule("yes", {"type": "container", "parents": True}),
                       make_rule("list", {"type": "container", "parents": [PARENTS[0], 7]})])
    for _ in range(3):
        for event in events:
            expected = [r.name for r in rules.rules if r.compiled.predicate(event)]
            assert [r.name for r in rules.match(event)] == expected, event


def test_one_and_true_and_a_tuple_are_not_taken_for_each_other() -> None:
    rules = RuleSet([make_rule(f"p{i}", {"type": "container", "parents": p})
                     for i, p in enumerate(PARENTS)]
                    + [make_rule("one", {"type": "container", "parents": 1}),
                       make_rule("listed", {"type": "container", "parents": [PARENTS[2]]})])
    for value, names in [([1], ["one"]), ([True], []), ([1.0], ["one"]), ([PARENTS[2]], ["p2", "listed"]),
                         ((PARENTS[2],), []), (PARENTS[2], ["p2", "listed"])]:
        for _ in range(4):  # seen, kept, answered from memory
            event = {"type": "container", "action": "update", "state": "Running", "parents": value}
            assert [r.name for r in rules.match(event)] == names, value


def test_many_distinct_and_huge_values_keep_memory_bounded() -> None:
    """A sender varying its values (or sending huge ones) fills the cache no further than
    its bounds, and each answer stays the full scan's."""
    from eventd.ruleset import prefilter

    rng = random.Random(1)
    rules = RuleSet([make_rule(f"r{i}", random_match(rng)) for i in range(200)])
    for i in range(prefilter.CACHE_ENTRIES + 1500):
        uri = f"/api/app/v1/ns/service/s{i % 7}/{i}/" + ("y" * 20_000 if i % 100 == 0 else "")
        event = {"type": "container", "action": "update", "state": "Running",
                 "parents": [uri, PARENTS[i % 6]], "resource_uri": uri}
        for _ in range(2):  # each value twice: every one of them would be kept
            got = [r.name for r in rules.match(event)]
        if i % 97 == 0:
            assert got == [r.name for r in rules.rules if r.compiled.predicate(event)]
        cache = rules._cache
        assert cache.entries <= prefilter.CACHE_ENTRIES
        assert cache.chars <= prefilter.CACHE_CHARS
        assert len(cache.seen) <= prefilter.SEEN_MAX
    assert sum(map(len, cache.tables)) == cache.entries
    assert max((len(k) if isinstance(k, str) else sum(map(len, k)) for t in cache.tables
                for k in t if isinstance(k, (str, tuple)) and all(isinstance(x, str) for x in
                                                                   (k if isinstance(k, tuple) else (k,)))),
               default=0) <= prefilter.KEY_CHARS


def test_a_reloaded_rule_set_answers_from_its_own_rules() -> None:
    event = {"type": "container", "action": "update", "state": "Running", "parents": [PARENTS[1]]}
    rules = [make_rule(f"p{i}", {"type": "container", "parents": p}) for i, p in enumerate(PARENTS)]
    before = RuleSet(rules)
    for _ in range(3):
        assert [r.name for r in before.match(event)] == ["p1"]
    after = RuleSet(rules[2:] + [make_rule("new", {"type": "container", "parents": PARENTS[1]})])
    assert [r.name for r in after.match(event)] == ["new"]
    assert [r.name for r in before.match(event)] == ["p1"]


def test_keys_with_the_same_candidates_share_one_plan_and_its_answers() -> None:
    """(type, action, state) keys whose candidates are the same rules share one plan, so an
    answer kept for one is the answer for the others; each stays the full scan's."""
    rules = RuleSet([make_rule(f"p{i}", {"type": "container", "parents": p})
                     for i, p in enumerate(PARENTS)]
                    + [make_rule("g", {"type": "container", "parents": {"glob": "*/s3/"}}),
                       make_rule("h", {"type": "container", "parents": {"regex": "s9/$"}})]
                    + [make_rule("stopped", {"type": "container", "state": "Stopped",
                                             "parents": PARENTS[0]})])
    events = [{"type": "container", "action": action, "state": state,
               "parents": [PARENTS[1], PARENTS[3]]}
              for action in ("create", "update", "delete") for state in ("Running", "Starting")]
    for event in events * 2:
        expected = [r.name for r in rules.rules if r.compiled.predicate(event)]
        assert [r.name for r in rules.match(event)] == expected == ["p1", "p3", "g"]
    plans = {id(plan) for plan in rules._memo.values()}
    assert len(plans) == 1  # "stopped" is no candidate for these states: one candidate tuple
    stopped = {"type": "container", "action": "update", "state": "Stopped",
               "parents": [PARENTS[0]]}
    assert [r.name for r in rules.match(stopped)] == ["p0", "stopped"]
    assert len({id(plan) for plan in rules._memo.values()}) == 2


def test_a_value_is_answered_from_memory_after_its_first_sighting() -> None:
    rules = RuleSet([make_rule(f"p{i}", {"type": "container", "parents": p})
                     for i, p in enumerate(PARENTS)]
                    + [make_rule(f"q{i}", {"type": "container", "parents": {"regex": f"s{i}/$"}})
                       for i in range(4)])
    event = {"type": "container", "action": "update", "state": "Running", "parents": [PARENTS[2]]}
    assert [r.name for r in rules.match(event)] == ["p2", "q2"]
    assert rules._cache.entries == 1  # kept at once: the cache is far from half full
    assert [r.name for r in rules.match(dict(event, parents=list(event["parents"])))] == ["p2", "q2"]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.composite(hostile_event)(), min_size=1, max_size=12))
def test_the_engines_uncopied_answers_are_the_full_scans(seed: int, events: list[dict]) -> None:
    """matched() (the engine's call) hands out the remembered tuple itself: its answers are
    still the full scan's, and a caller changing match()'s list changes no later answer."""
    rng = random.Random(seed)
    rules = RuleSet([make_rule(f"r{i}", random_match(rng)) for i in range(rng.randrange(1, 60))]
                    + [make_rule("one", {"type": "container", "parents": 1}),
                       make_rule("list", {"type": "container", "parents": [PARENTS[0], 7]})])
    for _ in range(3):
        for event in events:
            expected = [r for r in rules.rules if r.compiled.predicate(event)]
            assert list(rules.matched(event)) == expected, event
            mine = rules.match(event)
            assert mine == expected, event
            mine.append(rules.rules[0])  # the caller's own list: nothing else sees this
            mine.clear()
            assert list(rules.matched(event)) == expected, event


def test_a_remembered_answer_is_handed_out_without_a_copy() -> None:
    rules = RuleSet([make_rule(f"p{i}", {"type": "container", "parents": p})
                     for i, p in enumerate(PARENTS)]
                    + [make_rule(f"q{i}", {"type": "container", "parents": {"regex": f"s{i}/$"}})
                       for i in range(4)])
    event = {"type": "container", "action": "update", "state": "Running",
             "parents": [PARENTS[2], PARENTS[3]]}
    rules.matched(event)  # kept
    first = rules.matched(dict(event, parents=list(event["parents"])))
    assert isinstance(first, tuple) and [r.name for r in first] == ["p2", "p3", "q2", "q3"]
    assert rules.matched(event) is first
    assert rules.match(event) is not first and rules.match(event) == list(first)
    assert rules.matched({"type": "stack", "action": "update", "state": "Running"}) == ()


EQUALS_MATCHES = st.fixed_dictionaries(
    {"type": st.sampled_from(["container", ["container", "service"], {"glob": "cont*"}])},
    optional={"state": st.sampled_from(["Running", ["Running", "Stopped"]]),
              "parents": st.sampled_from(PARENTS + ["", "a\0b", "x" * 5000]) | st.text(max_size=5),
              "resource_uri": st.sampled_from(URIS) | st.integers(0, 2),
              "data.errorMessage": st.sampled_from(["x", "a\0b"])})


@settings(max_examples=80, deadline=None)
@given(EQUALS_MATCHES, st.lists(st.composite(hostile_event)(), min_size=1, max_size=10))
def test_a_lone_candidate_tested_inline_answers_as_its_residual(
        match: dict, events: list[dict]) -> None:
    """One rule (few candidates: no Plan): a residual of one plain field equal to a string
    is tested inline, with any value the sender puts there (lists of anything, NULs, huge)."""
    rules = RuleSet([make_rule("only", match)])
    for _ in range(2):
        for event in events + [dict(events[0], parents=[match.get("parents"), 1, None])]:
            expected = [r for r in rules.rules if r.compiled.predicate(event)]
            assert list(rules.matched(event)) == expected, (match, event)
            assert rules.match(event) == expected, (match, event)


def test_a_lone_plain_equality_is_inlined_and_nothing_else_is() -> None:
    from eventd.ruleset.index import _Equals

    event = {"type": "container", "action": "update", "state": "Running", "parents": [PARENTS[1]]}
    inlined = RuleSet([make_rule("p", {"type": "container", "parents": PARENTS[1]})])
    assert [r.name for r in inlined.matched(event)] == ["p"]
    assert [type(v) for v in inlined._memo.values()] == [_Equals]
    assert inlined.matched(dict(event, parents=PARENTS[1])) != ()
    assert inlined.matched(dict(event, parents=[PARENTS[2]])) == ()
    for match in ({"type": "container", "parents": {"glob": "*"}},
                  {"type": "container", "parents": PARENTS[1], "resource_uri": URIS[0]},
                  {"type": "container", "data.errorMessage": "x"},
                  {"type": "container", "parents": [PARENTS[1]]}):
        rules = RuleSet([make_rule("r", match)])
        rules.matched(event)
        assert not any(type(v) is _Equals for v in rules._memo.values()), match


TYPE_CONSTRAINTS = st.sampled_from([
    "container", "service", "5", "", "Container", ["container", "action"], {"glob": "contain*"},
    {"not": "container"}, {"in": ["node", "5"]}, {"regex": "^act"}, None])
EVENT_TYPES = st.one_of(st.sampled_from(["container", "service", "action", "node", "5", "",
                                         "Container", "containers", "x" * 5000, "\0"]),
                        st.integers(-1, 6), st.none(), st.lists(st.just("container"), max_size=2),
                        st.just("missing"))


@settings(max_examples=80, deadline=None)
@given(st.lists(TYPE_CONSTRAINTS, min_size=1, max_size=6), st.lists(EVENT_TYPES, max_size=12))
def test_an_event_of_a_type_no_rule_names_is_answered_as_the_full_scan(
        types: list, event_types: list) -> None:
    """matched() answers an event whose string type no rule names with no rule, without its
    index key; whatever the rules' type conditions (globs, negations, none at all) and the
    event's type (numbers, None, a list, missing), the answers are the full scan's."""
    rules = RuleSet([make_rule(f"r{i}", {} if t is None else {"type": t})
                     for i, t in enumerate(types)])
    for kind in event_types:
        event: dict = {"action": "update", "state": "Running"}
        if kind != "missing":
            event["type"] = kind
        expected = [r for r in rules.rules if r.compiled.predicate(event)]
        assert list(rules.matched(event)) == expected, (types, event)


def test_a_rule_set_whose_rules_all_name_their_types_skips_the_others_at_once() -> None:
    rules = RuleSet([make_rule("c", {"type": "container", "state": "Running"}),
                     make_rule("s", {"type": ["service", "stack"]})])
    assert rules.matched({"type": "node", "action": "update", "state": "Running"}) == ()
    assert rules._memo == {}  # answered without an index key: nothing remembered
    assert [r.name for r in rules.matched({"type": "container", "state": "Running"})] == ["c"]
    anything = RuleSet([make_rule("any", {"state": "Running"})])
    assert [r.name for r in anything.matched({"type": "node", "state": "Running"})] == ["any"]


INDEXED_ONLY = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["container", ["container", "action"], {"glob": "cont*"}]),
    "action": st.sampled_from(["update", ["create", "update"], {"not": "delete"}]),
    "state": st.sampled_from(["Running", ["Running", "Success"], {"in": ["Stopped"]}])})
KEY_VALUES = st.one_of(st.sampled_from(["container", "action", "update", "create", "delete",
                                        "Running", "Success", "Stopped", "x" * 3000]),
                       st.none(), st.integers(0, 2), st.lists(st.just("container"), max_size=2),
                       st.just("missing"))


@settings(max_examples=80, deadline=None)
@given(st.lists(INDEXED_ONLY, min_size=1, max_size=6),
       st.lists(st.tuples(KEY_VALUES, KEY_VALUES, KEY_VALUES), min_size=1, max_size=12))
def test_candidates_the_index_decides_alone_are_answered_as_the_full_scan(
        matches: list, keys: list) -> None:
    """Rules on type, action and state only (pinned, globbed, negated, none): where every
    candidate of a key is decided by the index, its answer is kept as is; whatever the event's
    values (numbers, None, lists, missing, huge), the answers are the full scan's."""
    rules = RuleSet([make_rule(f"r{i}", m) for i, m in enumerate(matches)])
    for _ in range(2):
        for values in keys:
            event = {name: value for name, value in zip(("type", "action", "state"), values,
                                                          strict=True) if value != "missing"}
            expected = [r for r in rules.rules if r.compiled.predicate(event)]
            assert list(rules.matched(event)) == expected, (matches, event)
            assert rules.match(event) == expected, (matches, event)


def test_an_answer_the_index_decides_alone_is_kept_and_handed_out_as_is() -> None:
    from eventd.ruleset.index import _Fixed

    rules = RuleSet([make_rule("all", {}), make_rule("done", {"type": "action",
                                                                "state": ["Success", "Failed"]}),
                     make_rule("glob", {"type": "container", "resource_uri": {"glob": "*/x/*"}})])
    event = {"type": "action", "action": "update", "state": "Success", "resource_uri": "/a/x/b"}
    first = rules.matched(event)
    assert [r.name for r in first] == ["all", "done"]
    assert type(first) is tuple and rules.matched(dict(event)) is first
    container = dict(event, type="container")  # a candidate with a test left: not kept as is
    assert [r.name for r in rules.matched(container)] == ["all", "glob"]
    assert [r.name for r in rules.matched(dict(container, resource_uri="/y/"))] == ["all"]
    assert [type(v) for v in rules._memo.values()].count(_Fixed) == 1


# -- a plan reading several fields: its remembered answer looked up inline by RuleSet.matched --

SEVERAL_FIELDS = [make_rule("uri", {"type": "container", "resource_uri": {"regex": "c[13]/$"}}),
                  make_rule("parent", {"type": "container", "parents": PARENTS[1]}),
                  make_rule("glob", {"type": "container", "parents": {"glob": "*/s2/"}}),
                  make_rule("error", {"type": "container", "data.errorMessage": {"exists": True}}),
                  make_rule("quoted", {"type": "container", '"data".code': "E1"}),
                  make_rule("one", {"type": "container", "parents": 1}),
                  make_rule("listed", {"type": "container", "parents": [PARENTS[0], 7]}),
                  make_rule("other", {"type": "container", "parents": PARENTS[3]})]


DATA_VARIANTS = [{}, {"data": {"errorMessage": "x"}}, {"data": {"code": "E1"}}, {"data": "text"},
                 {"data": None}]


def several_fields_event(draw: st.DrawFn) -> dict:
    """Mostly the usual event (no `data`: the inline key), sometimes `data` of any shape,
    values of any type (tuples too: never from JSON, never taken for a list)."""
    event = hostile_event(draw)
    if "data" in event and draw(st.booleans()):
        del event["data"]
    if draw(st.integers(0, 9)) == 0:
        event["parents"] = tuple(draw(st.lists(st.sampled_from(PARENTS), max_size=2)))
    return event


@settings(max_examples=80, deadline=None)
@given(st.lists(st.composite(several_fields_event)(), min_size=1, max_size=12))
def test_an_inline_answer_of_a_plan_reading_several_fields_is_the_full_scans(
        events: list[dict]) -> None:
    """RuleSet.matched builds a several-field plan's key itself when the event has no dotted
    field's first segment: each event three times (seen, kept, answered) gives the scan's."""
    rules = RuleSet(SEVERAL_FIELDS)
    # each event also without `data` and with a few: the same plain values, other answers
    variants = [{**{k: v for k, v in event.items() if k != "data"}, **extra}
                for event in events for extra in DATA_VARIANTS] + events
    variants += [dict(event, parents=tuple(event["parents"])) for event in variants
                 if type(event.get("parents")) is list]  # a tuple is no list's key
    for _ in range(3):
        for event in variants:
            expected = [r for r in rules.rules if r.compiled.predicate(event)]
            assert list(rules.matched(event)) == expected, event
            assert rules.match(event) == expected, event


def test_a_plan_reading_several_fields_answers_a_usual_event_without_its_own_calls() -> None:
    from eventd.ruleset.prefilter import Plan

    rules = RuleSet(SEVERAL_FIELDS)
    event = {"type": "container", "action": "update", "state": "Running",
             "resource_uri": URIS[1], "parents": [PARENTS[1], PARENTS[2]]}
    for _ in range(2):  # seen, kept
        assert [r.name for r in rules.matched(event)] == ["uri", "parent", "glob"]
    (plan,) = [p for p in rules._memo.values() if type(p) is Plan]
    assert plan.many and plan.head == "data" and plan.plain == ("parents", "resource_uri")
    calls: list[dict] = []
    plan.matched = lambda e: calls.append(e) or Plan.matched(plan, e)  # type: ignore[method-assign]
    assert [r.name for r in rules.matched(dict(event))] == ["uri", "parent", "glob"]
    assert calls == []  # answered inline
    with_data = dict(event, data={"errorMessage": "x"})
    assert [r.name for r in rules.matched(with_data)] == ["uri", "parent", "glob", "error"]
    assert calls == [with_data]  # a dotted field present: the plan's own key


@pytest.mark.parametrize("other", [
    {"parents": (PARENTS[1],)},  # a tuple (not from JSON) is no list's key
    {"data": {"errorMessage": "x"}}, {"data": {"code": "E1"}}, {"data": "text"}, {"data": None}])
def test_an_inline_key_is_never_taken_for_another_events(other: dict) -> None:
    rules = RuleSet(SEVERAL_FIELDS)
    usual = {"type": "container", "action": "update", "state": "Running",
             "resource_uri": URIS[0], "parents": [PARENTS[1]]}
    for _ in range(3):  # seen, kept, answered from memory
        assert [r.name for r in rules.matched(usual)] == ["parent"]
    event = dict(usual, **other)
    for _ in range(3):
        assert list(rules.matched(event)) == [r for r in rules.rules if r.compiled.predicate(event)]


@pytest.mark.parametrize("condition", [
    {"action": {"not": "update"}}, {"state": {"glob": "Run*"}}, {"type": {"regex": "^serv"}},
    {"any": [{"action": "create"}, {"state": "Stopped"}]},
    {"type": "service", "any": [{"type": "node"}, {"action": "create"}]}])
def test_keys_sharing_a_plan_do_not_share_answers_that_read_type_action_or_state(
        condition: dict) -> None:
    """(type, action, state) keys with the same candidates share a plan: an answer that
    depends on a type, action or state the index does not pin is not handed to another key."""
    rules = RuleSet([make_rule(f"g{i}", {"parents": {"glob": f"*x{i}*"}}) for i in range(8)]
                    + [make_rule("cond", condition)])
    events = [{"type": t, "action": a, "state": s, "parents": ["/p/"]}
              for t in ("service", "node") for a in ("update", "create")
              for s in ("Running", "Stopped")]
    for event in events * 3:  # seen, kept, answered from memory
        expected = [r.name for r in rules.rules if r.compiled.predicate(event)]
        assert [r.name for r in rules.match(event)] == expected, event


def test_two_candidates_with_a_test_left_are_answered_from_memory() -> None:
    """A catch-all beside a glob on parents (the wall-clock bench's services): a plan, whose
    answer for parents seen before is its kept tuple, not a scan."""
    from eventd.ruleset.prefilter import Plan

    rules = RuleSet([make_rule("all", {}),
                     make_rule("in-stack", {"type": "service", "parents": {"glob": "*/s2/*"}})])
    event = {"type": "service", "action": "update", "state": "Running",
             "parents": ["/api/app/v1/ns/s2/x/"]}
    first = rules.matched(event)
    assert [r.name for r in first] == ["all", "in-stack"]
    assert rules.matched(dict(event)) is rules.matched(dict(event))
    assert [type(v) for v in rules._memo.values()] == [Plan]


def test_many_candidates_the_index_decides_alone_are_answered_as_is() -> None:
    from eventd.ruleset.index import _Fixed

    rules = RuleSet([make_rule(f"s{i}", {"type": "service", "state": ["Running", f"S{i}"]})
                     for i in range(9)] + [make_rule("all", {})])
    event = {"type": "service", "action": "update", "state": "Running"}
    assert len(rules.matched(event)) == 10
    assert [type(v) for v in rules._memo.values()] == [_Fixed]


KEY_VALUES = st.sampled_from(["update", "create", "Running", "Stopped", "", None, "missing", 1,
                               True, 1.0, ["update"]])


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.composite(hostile_event)(), min_size=1, max_size=12),
       st.lists(st.tuples(EVENT_TYPES, KEY_VALUES, KEY_VALUES), max_size=6))
def test_a_batchs_answers_in_one_call_are_each_events_full_scan(
        seed: int, events: list[dict], keys: list) -> None:
    """matched_each (the engine's one call per batch) answers each event as the full scan
    does, in order, whatever the values: a type, action or state absent, None, a number,
    True beside 1, a list (the lookup by type, then action, then state finds only what a
    (type, action, state) key would), the memo and the plans' cache filled within the
    batch itself (an event seen, kept, then answered from memory in the same call)."""
    rng = random.Random(seed)
    rules = RuleSet([make_rule(f"r{i}", random_match(rng)) for i in range(rng.randrange(1, 60))]
                    + [make_rule("list", {"type": "container", "parents": [PARENTS[0], 7]}),
                       make_rule("node", {"type": "node", "state": "Running"}),
                       make_rule("created", {"type": "container", "action": "create"}),
                       make_rule("running", {"state": "Running"})])
    batch = list(events)
    for event, (kind, action, state) in zip(events, keys, strict=False):
        event = dict(event, type=kind, action=action, state=state)
        batch.append({k: v for k, v in event.items() if v != "missing"})
    expected = [[r.name for r in rules.rules if r.compiled.predicate(e)] for e in batch]
    for _ in range(3):
        answers = rules.matched_each(batch * 2)
        assert [[r.name for r in a] for a in answers] == expected * 2
        assert [[r.name for r in rules.matched(e)] for e in batch] == expected
