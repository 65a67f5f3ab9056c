"""The one gate every action's request passes through, at the moment it would be sent.

An attempt (eventd.delivery.attempts) runs in four steps, and only the last makes a request:

    gate.check_job(job)       the job itself: its MAC (a durable job is signed when spooled),
                              a loaded rule of its name with an action of its kind, whose
                              literal options and queue it matches
    kind.prepare(job)         the kind renders what it would send: an `Outbound`
    gate.admit(job, outbound) the policy the Outbound names judges every call in it
    kind.send(job, outbound)  the kind sends exactly that Outbound, nothing else

A refusal is a GateRefused (a PermanentActionError: the job becomes a dead letter with the
reason, logged once by the dispatcher) and `eventd_gate_refused_total{kind,reason}`; no
request is made. The policy (eventd.delivery.policies) is built from configuration only:
--allow-host, --allow-plaintext, DOCKERCLOUD_NAMESPACE (or the credentials' user), the REST
host, the source, eventd's own container, and the rules loaded since start (`Grant`s).

How a kind declares what it sends (a new kind, e.g. `nats`, `slack`, `postgres`): its
`prepare(job)` returns `Outbound(kind, policy, calls)`, one `Call` per request on the wire,
each with a method (or verb), an `Address` from `eventd.outbound.parse_url` (HTTP) or built
from a broker's host, port and subject/topic/table, its headers and body, and
`credentials=True` when a secret goes with it. `policy` names the check in POLICIES that
applies: `http` (plain HTTPS kinds: pagerduty, opsgenie, slack, msteams), `dockercloud`,
`docker`, `local`; a broker kind adds one (its host against --allow-host, its subject
against what the rule names) with one entry in POLICIES, and nothing here changes. `send`
must send the calls' addresses as they are, and never follow a redirect.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from eventd.delivery.policies import POLICIES, Grant, Policy, Problem
from eventd.delivery.signing import JobSigner
from eventd.errors import GateRefused
from eventd.ops.metrics import ACTION_KINDS, Metrics
from eventd.outbound import BadAddress, Outbound
from eventd.records import ActionJob

__all__ = ["REASONS", "Gate", "GateRefused", "Grant", "Policy", "Rules"]

logger = logging.getLogger(__name__)

#: the `reason` labels of eventd_gate_refused_total
REASONS = ("unsigned", "mac", "rule", "kind", "options", "policy", "redirect", "url", "path",
           "host", "plaintext", "namespace", "call", "container", "self")

#: the loaded rules as the gate sees them: rule name -> what each of its actions can produce
Rules = Mapping[str, tuple[Grant, ...]]


class Gate:
    """Admits or refuses each attempt's job and request; see the module docstring."""

    def __init__(self, policy: Policy, metrics: Metrics, *, signer: JobSigner | None = None,
                 rules: Rules | None = None) -> None:
        """`signer` None: MACs are neither made nor checked; `rules` None: no rule is known,
        so jobs are not matched against rules (a dispatcher built without a rule set, in
        tests). The pipeline gives both."""
        self.policy = policy
        self.metrics = metrics
        self.signer = signer
        self._rules = rules
        self._refused = metrics.gate_refused

    def use_rules(self, rules: Rules) -> None:
        """Add the rules now loaded (at start and at each reload) to those loaded before.

        A job accepted under the rules of a moment ago may still wait in the spool when a
        reload renames or changes its rule: what any rule set of this process could produce
        stays admitted until it stops (jobs read back after a restart need a rule loaded
        then). A forged job still needs its MAC.
        """
        merged: dict[str, tuple[Grant, ...]] = dict(self._rules or {})
        for name, grants in rules.items():
            known = list(merged.get(name, ()))
            known.extend(grant for grant in grants if grant not in known)
            merged[name] = tuple(known)
        self._rules = merged

    def sign(self, job: ActionJob) -> None:
        """Sign a job before it is spooled."""
        if self.signer is not None:
            job.mac = self.signer.sign(job)

    def check_job(self, job: ActionJob, durable: bool) -> Grant | None:
        """The job is one this eventd wrote and a loaded rule can produce; the matching Grant."""
        if durable and self.signer is not None and not self.signer.verify(job):
            if not job.mac:
                raise self._refuse(job, Problem(
                    "unsigned", "the job carries no MAC (spooled by an eventd before the gate, "
                                "or written into the store by hand)"))
            raise self._refuse(job, Problem(
                "mac", "the job's MAC does not verify (written or changed outside eventd, or "
                       "signed with another key)"))
        rules = self._rules
        if rules is None:
            return None
        grants = rules.get(job.rule)
        if grants is None:
            raise self._refuse(job, Problem("rule", f"no rule named {job.rule[:80]!r} is loaded"))
        of_kind = [grant for grant in grants if grant.kind == job.kind]
        if not of_kind:
            raise self._refuse(job, Problem("kind", f"rule {job.rule} has no {job.kind[:40]} "
                                                    "action"))
        for grant in of_kind:
            if _produces(grant, job):
                return grant
        raise self._refuse(job, Problem("options", f"its options or queue are not ones rule "
                                                   f"{job.rule}'s {job.kind} action can produce"))

    def admit(self, job: ActionJob, outbound: Outbound, grant: Grant | None) -> None:
        """Raise GateRefused unless the policy the Outbound names admits every call in it."""
        check = POLICIES.get(outbound.policy)
        if check is None or outbound.kind != job.kind or not outbound.calls:
            raise self._refuse(job, Problem("policy", f"no gate policy {outbound.policy!r} for "
                                                      f"a {job.kind[:40]} action"))
        if any(call.follows_redirects for call in outbound.calls):
            raise self._refuse(job, Problem("redirect", "a call would follow redirects"))
        problem = check(self.policy, job, outbound, grant)
        if problem is not None:
            raise self._refuse(job, problem)

    def unparsable(self, job: ActionJob, exc: BadAddress) -> GateRefused:
        """The refusal of a job whose address (a URL, a container) cannot be read unambiguously."""
        return self._refuse(job, Problem(exc.reason, str(exc)))

    def _refuse(self, job: ActionJob, problem: Problem) -> GateRefused:
        kind = job.kind if job.kind in ACTION_KINDS else "unknown"
        self._refused.labels(kind=kind, reason=problem.reason).inc()
        return GateRefused(f"{job.kind[:40]}: refused, no request made: "
                           f"{problem.message}", reason=problem.reason)


def _produces(grant: Grant, job: ActionJob) -> bool:
    """Whether `grant` can have produced the job's options and queue."""
    if grant.target is not None and grant.target != job.target:
        return False
    options = job.options
    if not isinstance(options, dict):
        return False
    if options == grant.literals:  # options without a template (an audit file's): in C
        return True
    for key, value in options.items():
        if key not in grant.keys:
            return False
        if key in grant.literals and grant.literals[key] != value:
            return False
    return True
