"""A job's MAC holds after any store's round trip, and breaks with any change that matters.

The stores write `json.dumps(job.to_dict(), default=str)` and read it back with `json.loads`;
`eventd.delivery.signing.canonical` must give the same bytes for both sides whatever the job
holds (tuples, integer keys, integers past 64 bits, NaN, lone surrogates, objects JSON cannot
hold), or a job eventd wrote would be refused as forged.
"""

from __future__ import annotations

import datetime as _dt
import json

from hypothesis import given
from hypothesis import strategies as st

from eventd.delivery.signing import JobSigner, canonical
from eventd.records import ActionJob

keys = st.text(max_size=6) | st.integers(-5, 5) | st.booleans() | st.none()
leaves = (st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.floats()
          | st.text(max_size=12) | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
          | st.just(_dt.datetime(2026, 1, 2, 3, 4, 5)) | st.binary(max_size=4))
values = st.recursive(leaves, lambda children: st.lists(children, max_size=4)
                      | st.lists(children, max_size=3).map(tuple)
                      | st.dictionaries(keys, children, max_size=4), max_leaves=20)
SIGNER = JobSigner(b"k" * 32, "test")


def stored(job: ActionJob) -> ActionJob:
    """The job as every store gives it back."""
    return ActionJob.from_dict(json.loads(json.dumps(job.to_dict(), separators=(",", ":"),
                                                     default=str)))


@given(options=st.dictionaries(st.text(max_size=8), values, max_size=4),
       event=st.dictionaries(st.text(max_size=8), values, max_size=4))
def test_a_jobs_mac_holds_after_a_stores_round_trip(options, event):
    job = ActionJob(id="j", rule="r", kind="webhook", options=options, event=event,
                    target="webhook:https://h:443", created_at=1.0)
    job.mac = SIGNER.sign(job)
    back = stored(job)
    assert canonical(back) == canonical(stored(back))
    assert SIGNER.verify(back), (canonical(job), canonical(back))


@given(event=st.dictionaries(st.text(max_size=8), values, min_size=1, max_size=4),
       extra=values)
def test_a_change_to_the_event_breaks_the_mac(event, extra):
    job = ActionJob(id="j", rule="r", kind="webhook", options={}, event=event,
                    target="webhook:https://h:443", created_at=1.0)
    job.mac = SIGNER.sign(job)
    changed = stored(job)
    changed.event = {**changed.event, "\x00added": extra}
    assert not SIGNER.verify(changed)
