"""The rule model: what a loaded rule is (Rule, ActionSpec, ThrottleSpec) and what a problem is.

Plain frozen dataclasses, built only by `eventd.ruleset.loader`; the engine reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eventd.ruleset import templates
from eventd.ruleset.enrichment import Enrichment
from eventd.ruleset.matching import CompiledMatch

__all__ = ["MODES", "ActionSpec", "GroupSpec", "Problem", "Rule", "ThrottleSpec"]

#: a rule's `mode`: live runs its actions; shadow only says what it would run
MODES = ("live", "shadow")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a rule file, with where it is (line and column from 1; 0 when it
    has no place in a file: a path that does not exist)."""

    file: str
    line: int
    col: int
    rule: str | None
    message: str
    severity: str = "error"  # or "warning": a likely typo that still loads (`check --strict` fails on it)

    @property
    def is_warning(self) -> bool:
        """True for a warning: the rule loads, but probably never fires as meant."""
        return self.severity == "warning"

    def format(self) -> str:
        """`FILE:LINE:COL: rule NAME: message`, as compilers print it, so editors can jump
        (`FILE: message` for a problem with no place in the file: line 0)."""
        place = f"{self.file}:{self.line}:{self.col}: " if self.line > 0 else f"{self.file}: "
        where = place + ("warning: " if self.is_warning else "")
        return where + (f"rule {self.rule}: " if self.rule else "") + self.message

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True, slots=True)
class ThrottleSpec:
    """At most one run per rendered `key` per `window` seconds."""

    key: str  # the template source
    window: float
    _render: templates.Renderer = field(repr=False, compare=False)

    def render_key(self, context: Mapping[str, Any]) -> str:
        """The throttle key for one event (raises TemplateError)."""
        return str(self._render(context))


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A digest (`group` of a webhook): events whose rendered `by` is the same share a request."""

    by: str  # the template source
    _render: templates.Renderer = field(repr=False, compare=False)

    def render_key(self, context: Mapping[str, Any]) -> str:
        """The group key for one event (raises TemplateError)."""
        return str(self._render(context))


@dataclass(frozen=True, eq=False, slots=True)
class ActionSpec:
    """One `{kind: options}` entry of a rule, its templates compiled."""

    kind: str
    index: int  # position in the rule's actions, from 0
    options: dict[str, Any]  # as written, after ${VAR} expansion
    rule: str
    _render: templates.Renderer = field(repr=False)
    #: set for a grouped webhook: options are rendered when the group closes, not per event
    group: GroupSpec | None = None
    #: the options hold no template and no group: rendering them needs no context
    constant: bool = field(init=False, repr=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "constant", self.group is None
                           and not templates.has_template(self.options))

    def render(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """The options with every template rendered (raises TemplateError naming rule+action)."""
        result: dict[str, Any] = self._render(context)
        return result


@dataclass(frozen=True, eq=False, slots=True)
class Rule:
    """A loaded, validated rule; `compiled` holds its match as closures."""

    name: str
    description: str
    enabled: bool
    throttle: ThrottleSpec | None
    enrich: str | None
    when: templates.Condition | None
    allow_self_caused: bool
    actions: tuple[ActionSpec, ...]
    file: str
    line: int
    match: Mapping[str, Any] = field(default_factory=dict, repr=False)
    compiled: CompiledMatch = field(default=None, repr=False)  # type: ignore[assignment]
    mode: str = "live"  # or "shadow": matched, counted and logged, no action runs
    #: what `enrich` asks for besides the resource: logs, history (eventd.ruleset.enrichment)
    enrichment: Enrichment | None = None
    _kinds: frozenset[str] = field(init=False, repr=False, default=frozenset())
    #: live, no `when`, no throttle, every action's options constant: the engine builds no
    #: template context for it
    plain: bool = field(init=False, repr=False, default=False)

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether the rule's `match` holds for `event`."""
        return self.compiled.predicate(event)

    def throttle_key(self, context: Mapping[str, Any]) -> str:
        """The rendered throttle key ("" when the rule has no throttle)."""
        return "" if self.throttle is None else self.throttle.render_key(context)

    def when_holds(self, context: Mapping[str, Any]) -> bool:
        """Whether `when` holds (True without one); raises TemplateError."""
        return True if self.when is None else self.when.holds(context)

    @property
    def kinds(self) -> frozenset[str]:
        """The action kinds this rule uses (computed once: the engine asks on every match)."""
        return self._kinds

    def __post_init__(self) -> None:
        object.__setattr__(self, "_kinds", frozenset(a.kind for a in self.actions))
        object.__setattr__(self, "plain", self.mode == "live" and self.when is None
                           and self.throttle is None and self.enrichment is None
                           and all(a.constant for a in self.actions))
