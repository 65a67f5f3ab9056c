"""The de-dup window: bounded, forgets by generations, saved to the store while running."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tracemalloc
import uuid as uuidlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.dedupe import DedupeSaver, DedupeWindow, fingerprint
from eventd.events import Batch, Received
from eventd.stores.memory import MemoryStore
from eventd.stores.sqlite import SqliteStore
from tests.waiting import wait_until


def test_window_remembers_at_least_half_and_at_most_its_size() -> None:
    window = DedupeWindow(4)
    assert [window.check_and_add(u) for u in "ab"] == [False, False]  # generation 1 full
    assert [window.check_and_add(u) for u in "cd"] == [False, False]  # generation 2 full
    assert all(u in window for u in "abcd") is False  # "ab" were dropped as a whole
    assert "c" in window and "d" in window
    assert window.check_and_add("d") is True
    assert window.check_and_add("a") is False
    assert len(window) <= 4


def test_window_stays_bounded_over_many_uuids() -> None:
    window = DedupeWindow(1000)
    for i in range(10_000):
        assert window.check_and_add(f"u{i}") is False
        assert len(window) <= 1000
    assert all(window.check_and_add(f"u{i}") for i in range(9_500, 10_000))


def test_window_survives_a_store_restart(tmp_path) -> None:
    store = SqliteStore(tmp_path)
    saver = DedupeSaver.load(store, size=4)
    for uuid in ("u1", "u2", "u3", "u4", "u5"):
        assert saver.window.check_and_add(uuid) is False
    saver.close()
    store.close()
    reopened = SqliteStore(tmp_path)
    try:
        window = DedupeSaver.load(reopened, size=4).window
        assert window.check_and_add("u5") is True
        assert window.check_and_add("u4") is True
        assert window.check_and_add("u1") is False  # forgotten with its generation
    finally:
        reopened.close()


def test_window_is_saved_while_running_not_only_at_close(tmp_path) -> None:
    store = SqliteStore(tmp_path)
    saver = DedupeSaver.load(store, interval=0.05)
    saver.start()
    try:
        saver.window.check_and_add("before-the-kill")
        # Another handle sees it committed on disk, with no close() of the saver or the store.
        other = SqliteStore(tmp_path)
        try:
            wait_until(lambda: "before-the-kill" in DedupeWindow.restore(other.dedupe_load()), 5,
                       message="the window saved in the background")
        finally:
            other.close()
    finally:
        saver.close()
        store.close()


def test_an_unchanged_window_is_not_written_again() -> None:
    store = MemoryStore()
    saver = DedupeSaver.load(store)
    assert saver.save() and saver.saves == 0
    saver.window.check_and_add("a")
    assert saver.save() and saver.saves == 1
    saver.window.check_and_add("a")  # a duplicate changes nothing
    assert saver.save() and saver.saves == 1


def test_a_failing_store_is_logged_once_and_the_saver_keeps_going(caplog) -> None:
    store = MemoryStore()
    saver = DedupeSaver.load(store)
    store.close()
    saver.window.check_and_add("a")
    with caplog.at_level(logging.WARNING, logger="eventd.dedupe"):
        assert saver.save() is False
        saver.window.check_and_add("b")
        assert saver.save() is False
    assert [r.getMessage()[:33] for r in caplog.records] == ["could not save the de-dup window "]


def test_a_full_window_is_small_in_memory_and_in_its_snapshot() -> None:
    """50k uuids held as 36-character strings were about 8 MiB, and each 2-s save built a
    2 MB JSON list beside them; full (its worst moment, just before the current generation
    turns) the window holds 1.4 MB of arrays, and a snapshot is 8 bytes a uuid."""
    uuids = (str(uuidlib.uuid4()) for _ in range(49_999))  # generated one at a time, not kept
    tracemalloc.start()
    try:
        window = DedupeWindow(50_000)
        for uuid in uuids:
            window.check_and_add(uuid)
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        snapshot = window.snapshot()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(window) == 49_999
    assert held < 2 * 2**20, f"a full window holds {held / 2**20:.1f} MiB"
    assert len(snapshot) < 8 * 50_000 + 16
    assert peak - held < 2.5 * len(snapshot), "a save holds two copies of the snapshot at most"


def test_a_snapshot_matches_in_another_process_whatever_its_hash_seed(tmp_path) -> None:
    """A saved window must still recognise its uuids after a restart, when str hashes have
    another random seed: the fingerprint may not come from hash(str)."""
    uuids = [str(uuidlib.uuid4()) for _ in range(100)]
    code = ("import sys; from eventd.dedupe import DedupeWindow; w = DedupeWindow(1000)\n"
            "for u in sys.argv[1:]: w.check_and_add(u)\n"
            "sys.stdout.buffer.write(w.snapshot())")
    for seed in ("1", "2"):
        made = subprocess.run([sys.executable, "-c", code, *uuids], capture_output=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        window = DedupeWindow.restore(made.stdout, 1000)
        assert len(window) == 100 and all(window.check_and_add(u) for u in uuids)
        assert window.check_and_add(str(uuidlib.uuid4())) is False


def test_fingerprints_are_pinned_and_tell_near_uuids_apart() -> None:
    """The snapshot format depends on these values: they may never change."""
    assert fingerprint("a") == 97
    assert fingerprint("0f7c2c1e-8d2a-4c7b-9a55-000000000001") == 0xc8089fda51518d1
    near = [f"0f7c2c1e-8d2a-4c7b-9a55-{n:012d}" for n in range(100_000)]
    assert len({fingerprint(u) for u in near}) == len(near)
    short = [f"u{n}" for n in range(100_000)]
    assert len({fingerprint(u) for u in short}) == len(short)


def test_a_window_saved_by_an_earlier_eventd_as_a_json_list_is_read() -> None:
    window = DedupeWindow.restore(orjson.dumps(["old-1", "old-2", 7]), 10)
    assert "old-1" in window and "old-2" in window and len(window) == 2


def test_a_damaged_snapshot_starts_an_empty_window() -> None:
    for data in (b"", b"EDW1", b"EDW1\x00\x00\x00\x00abc", b"[not json", b"garbage!"):
        assert len(DedupeWindow.restore(data)) == 0


def test_a_smaller_window_keeps_the_newest_generation_of_a_snapshot() -> None:
    big = DedupeWindow(20)
    for n in range(15):  # u0..u9 the older generation, u10..u14 the current one
        big.check_and_add(f"u{n}")
    small = DedupeWindow.restore(big.snapshot(), 10)
    assert all(f"u{n}" in small for n in range(10, 15))
    assert not any(f"u{n}" in small for n in range(10)) and len(small) == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "", "\ud800",
                                            5, None]), st.booleans()), max_size=60),
       st.integers(2, 12), st.integers(1, 7))
def test_a_batch_probe_finds_what_one_by_one_probes_find(items, size, batch_size) -> None:
    """repeated(batch) is check_and_add over the batch: same repeats, same window after."""
    one, many = DedupeWindow(size), DedupeWindow(size)
    events = [Received({"type": "container", "uuid": uid}, 0.0, None, internal)
              for uid, internal in items]
    expected = [i for i, r in enumerate(events)
                if not r.internal and isinstance(r.event["uuid"], str) and r.event["uuid"]
                and one.check_and_add(r.event["uuid"])]
    found: list[int] = []
    for start in range(0, len(events), batch_size):
        found += sorted(start + i for i in many.repeated(events[start:start + batch_size]) or ())
    assert found == expected
    assert many.snapshot() == one.snapshot()
    assert many.version == one.version


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "", "\ud800", 5, None]), max_size=40),
       st.integers(2, 12), st.booleans())
def test_a_batch_of_lists_is_probed_as_its_received_are(uids, size, internal) -> None:
    """A stream's Batch (events as one list, one `internal` flag) finds what the same
    events as Received objects find, and leaves the same window."""
    events = [{"type": "container", "uuid": uid} for uid in uids]
    as_lists, as_objects = DedupeWindow(size), DedupeWindow(size)
    batch = Batch(events, 0.0, None, internal)
    assert as_lists.repeated(batch) == as_objects.repeated(list(batch))
    assert as_lists.snapshot() == as_objects.snapshot()


#: its UTF-8 bytes read as an int are 2**60: the fingerprint's `& mask` is 0, kept as 1
_MASKED_TO_ZERO = "\0" * 7 + "\x10"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "", _MASKED_TO_ZERO, "\x01", "é" * 40,
                                          "x" * 5000, "\ud800", 5, None, "MISSING"]),
                         max_size=12), max_size=8),
       st.integers(2, 12))
def test_a_streams_batches_are_probed_as_one_by_one(batches, size) -> None:
    """A stream's Batch (the fingerprints taken in C calls over the whole batch, or one by
    one when an event has no string uuid) finds what check_and_add finds, same window after;
    an empty uuid is skipped, a uuid whose fingerprint masks to 0 is kept as 1."""
    one, many = DedupeWindow(size), DedupeWindow(size)
    for uids in batches:
        events = [{"type": "container"} if uid == "MISSING" else {"type": "container", "uuid": uid}
                  for uid in uids]
        expected = {i for i, e in enumerate(events)
                    if isinstance(e.get("uuid"), str) and e["uuid"] and one.check_and_add(e["uuid"])}
        assert (many.repeated(Batch(events, 0.0)) or set()) == expected
        assert many.snapshot() == one.snapshot()
        assert many.version == one.version
    assert DedupeWindow(4, [_MASKED_TO_ZERO]).check_and_add(_MASKED_TO_ZERO)


def _status_kib(name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/self/status")


def test_a_new_generation_costs_no_resident_memory_until_it_fills() -> None:
    """The tables of a 400k window are 2 x 4 MB of 8-byte slots: resident only as they are
    written. Turning a full generation (the streaming peak's moment) adds no fresh table's
    worth to the peak RSS (an array of zeros was written whole at once, beside the two full
    generations)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc (Linux)")
    before = _status_kib("VmRSS")
    window = DedupeWindow(400_000)
    assert _status_kib("VmRSS") - before < 1024, "a new window's tables are resident at once"
    uuids = [str(uuidlib.uuid4()) for _ in range(200_001)]
    for uuid in uuids[:199_999]:  # the current generation one short of turning
        window.check_and_add(uuid)
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS
    except OSError:
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    full = _status_kib("VmRSS")
    for uuid in uuids[199_999:]:  # the turn, and the first uuid of the new generation
        assert not window.check_and_add(uuid)
    assert _status_kib("VmHWM") - full < 1024, "the turn wrote a fresh table whole"
    assert all(uuid in window for uuid in uuids[::1000])
