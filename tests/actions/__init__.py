"""Tests of the action kinds, and helpers shared with the dispatch tests."""

from __future__ import annotations

import itertools
import time
from typing import Any

from eventd.actions.base import ActionContext
from eventd.ops.metrics import Metrics
from eventd.records import ActionJob
from eventd.settings import Settings

_ids = itertools.count(1)

EVENT = {"type": "container", "action": "update", "state": "Stopped",
         "resource_uri": "/api/app/v1/user/container/c1dd4e1e-1356-411c-8613-e15146633640/",
         "parents": ["/api/app/v1/user/service/09cbcf8d-a727-40d9-b420-c8e18b7fa55b/"],
         "uuid": "6a1f0e52-7c1e-4d8e-9a55-0b9c3f1e2a01", "datetime": "2016-06-01T10:15:02Z"}


def make_context(metrics: Metrics | None = None, **kwargs: Any) -> ActionContext:
    """An ActionContext on a fresh registry unless one is given."""
    return ActionContext(settings=Settings(), metrics=metrics or Metrics(), **kwargs)


def make_job(kind_obj: Any, options: dict[str, Any], *, rule: str = "rule-a",
             job_id: str | None = None, event: dict[str, Any] | None = None,
             created_at: float | None = None, context: dict[str, Any] | None = None) -> ActionJob:
    """A job as the engine builds it (target from the kind, a unique id)."""
    return ActionJob(id=job_id or f"job-{next(_ids):06d}", rule=rule, kind=kind_obj.name,
                     options=options, event=dict(event or EVENT),
                     target=kind_obj.target(options),
                     created_at=time.time() if created_at is None else created_at,
                     context=dict(context or {}))


def gate_for(kind_obj: Any, *, rules: Any = None, namespaces: tuple[str, ...] = ()) -> Any:
    """The gate a dispatcher on this kind's context would use (no rules, no job key unless
    given), with `namespaces` served besides the REST credentials' own."""
    import dataclasses

    from eventd.delivery.gate import Gate, Policy

    context = kind_obj.context
    rest = getattr(context, "rest", None)
    policy = Policy.from_settings(context.settings,
                                  user=rest.account if rest is not None else None,
                                  rest_host=rest.rest_host if rest is not None else None)
    if namespaces:
        policy = dataclasses.replace(policy, namespaces=policy.namespaces | set(namespaces))
    return Gate(policy, context.metrics, rules=rules)


def attempt(kind_obj: Any, job: ActionJob, *, gate: Any = None) -> Any:
    """One attempt as the dispatcher makes it: the gate, `prepare`, the gate, `send`.

    Raises what the attempt raises (GateRefused when the gate refuses). Without rules, the
    job's options count as what its rule wrote literally (a docker target named in the rule).
    """
    from eventd.delivery.gate import Grant
    from eventd.outbound import BadAddress

    gate = gate if gate is not None else gate_for(kind_obj)
    grant = gate.check_job(job, kind_obj.durable)
    if grant is None:
        grant = Grant(job.kind, dict(job.options), frozenset(job.options), None)
    try:
        outbound = kind_obj.prepare(job)
    except BadAddress as exc:
        raise gate.unparsable(job, exc) from None
    gate.admit(job, outbound, grant)
    return kind_obj.send(job, outbound)


_REQUIRED = object()


def sample(metrics: Metrics, name: str, default: Any = _REQUIRED, **labels: str) -> float:
    """A metric sample's value; a sample that does not exist fails the test.

    Pass `default=0` only where absence is expected (a condition polled before the first
    count): an assertion on a misspelt name or label must not pass by reading 0.
    """
    value = metrics.registry.get_sample_value(name, labels)
    if value is None:
        if default is _REQUIRED:
            raise AssertionError(f"no sample {name}{labels} in the registry")
        return float(default)
    return value
