"""The barrier state machine, property-based: exactly once per partition, whatever the order."""

from __future__ import annotations

from typing import Literal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamflow import AllOf, AnyOf
from streamflow.triggers import Barrier, PartitionState, Slot

INPUTS = ["sales", "fx", "loyalty"]


def slot(partition: str, asset: str, version: int = 0) -> Slot:
    return Slot(f"{asset}-{partition}-v{version}", 1, b"{}", [])


arrivals = st.lists(
    st.tuples(st.sampled_from(["d1", "d2", "d3", "d4"]), st.sampled_from(INPUTS)),
    min_size=1, max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(arrivals=arrivals, restarts=st.sets(st.integers(0, 60)))
def test_all_of_fires_exactly_once_per_complete_partition(
    arrivals: list[tuple[str, str]], restarts: set[int]
) -> None:
    """Any interleaving, any duplicates, any restarts (state reloaded from its changelog form)."""
    barrier = Barrier("report", INPUTS, AllOf())
    states: dict[str, PartitionState] = {}
    fired: dict[str, list[str]] = {}
    for i, (partition, asset) in enumerate(arrivals):
        if i in restarts:  # a restart: only what the changelog holds survives
            states = {k: PartitionState.from_json(orjson.loads(orjson.dumps(s.to_json())))
                      for k, s in states.items()}
        state = states.setdefault(partition, PartitionState(partition, 0, 0))
        fire = barrier.offer(state, asset, slot(partition, asset))
        if fire is not None:
            fired.setdefault(partition, []).append(fire.run_id)
            assert set(fire.slots) == set(INPUTS)
            assert fire.completing == asset
    complete = {p for p in {p for p, _ in arrivals}
                if {a for q, a in arrivals if q == p} == set(INPUTS)}
    assert set(fired) == complete
    assert all(len(runs) == 1 for runs in fired.values())


Kind = Literal["new", "redelivery", "same-content"]
"""How an arrival relates to the input's previous one for its partition: a new version with new
content, the same arrival again, or a new arrival id carrying the same bytes."""

versioned = st.lists(
    st.tuples(st.sampled_from(["d1", "d2", "d3"]), st.sampled_from(INPUTS),
              st.sampled_from(["new", "new", "redelivery", "same-content"])),
    min_size=1, max_size=60,
)


def expected_fires(arrivals: list[tuple[str, str, Kind]], refire: bool) -> dict[str, int]:
    """The oracle: a partition fires when its last input first arrives; after that, under
    ``refire`` each new version of an input fires again (a redelivery or the same content
    never does); under ``ignore`` nothing more fires."""
    seen: dict[str, set[str]] = {}
    fires: dict[str, int] = {}
    for partition, asset, kind in arrivals:
        inputs = seen.setdefault(partition, set())
        if asset in inputs and kind != "new":
            continue
        inputs.add(asset)
        if inputs == set(INPUTS) and (refire or partition not in fires):
            fires[partition] = fires.get(partition, 0) + 1
    return fires


@settings(max_examples=300, deadline=None)
@given(arrivals=versioned, restarts=st.sets(st.integers(0, 60)))
def test_a_new_version_refires_exactly_when_asked(
    arrivals: list[tuple[str, str, Kind]], restarts: set[int]
) -> None:
    """``refire`` fires once per new version of a fired partition, with the latest slot of
    every input and the new version as the completing input; ``ignore`` fires once. Neither
    fires on a redelivery or on the same content under a new arrival id, across restarts."""
    for policy in ("ignore", "refire"):
        barrier = Barrier("report", INPUTS, AllOf(on_new_version=policy))
        states: dict[str, PartitionState] = {}
        latest: dict[tuple[str, str], Slot] = {}
        fires: dict[str, list[str]] = {}
        for i, (partition, asset, kind) in enumerate(arrivals):
            if i in restarts:
                states = {k: PartitionState.from_json(orjson.loads(orjson.dumps(s.to_json())))
                          for k, s in states.items()}
            prev = latest.get((partition, asset))
            if prev is None or kind == "new":
                version = 0 if prev is None else prev.version + 1
                new = Slot(f"{asset}-{partition}-v{version}", version,
                           orjson.dumps({"v": version}), [])
            elif kind == "redelivery":
                new = prev
            else:
                new = Slot(f"{prev.arrival_id}-again", prev.version, prev.value, [])
            if prev is None or kind == "new":
                latest[(partition, asset)] = new
            state = states.setdefault(partition, PartitionState(partition, 0, 0))
            fire = barrier.offer(state, asset, new)
            if fire is not None:
                fires.setdefault(partition, []).append(fire.run_id)
                assert fire.completing == asset
                assert {a: s.arrival_id for a, s in fire.slots.items()} == {
                    a: latest[(partition, a)].arrival_id for a in INPUTS}
        counts = {p: len(runs) for p, runs in fires.items()}
        assert counts == expected_fires(arrivals, refire=policy == "refire")
        assert all(len(set(runs)) == len(runs) for runs in fires.values())


def test_refire_fires_again_on_each_new_version_only() -> None:
    """The oracle's reading of ``refire``, spelled out on one partition."""
    barrier = Barrier("report", INPUTS, AllOf(on_new_version="refire"))
    state = PartitionState("d1", 0, 0)

    def offer(asset: str, version: int, value: bytes | None = None) -> bool:
        body = value if value is not None else orjson.dumps({"v": version})
        return barrier.offer(state, asset, Slot(f"{asset}-v{version}", version, body, [])) \
            is not None

    assert [offer("sales", 0), offer("fx", 0), offer("sales", 1)] == [False, False, False]
    assert offer("loyalty", 0)  # complete: the first firing
    assert offer("fx", 1)  # a new version: fires again
    assert not offer("fx", 1)  # redelivered
    assert not offer("fx", 2, orjson.dumps({"v": 1}))  # the same content under a new id
    assert offer("sales", 2)


def test_any_of_fires_per_new_arrival_and_dedupes() -> None:
    barrier = Barrier("s", INPUTS, AnyOf())
    state = PartitionState("d1", 0, 0)
    assert barrier.offer(state, "sales", slot("d1", "sales")) is not None
    assert barrier.offer(state, "sales", slot("d1", "sales")) is None  # duplicate
    fire = barrier.offer(state, "fx", slot("d1", "fx"))
    assert fire is not None and set(fire.slots) == {"sales", "fx"}


def test_deadline_expiry() -> None:
    barrier = Barrier("s", INPUTS, AllOf(deadline_s=1.0))
    state = PartitionState("d1", 0, first_seen_ms=1_000)
    barrier.offer(state, "sales", slot("d1", "sales"))
    assert not barrier.expired(state, 1_999) and barrier.expired(state, 2_000)
    fire = barrier.on_deadline(state)
    assert set(fire.slots) == {"sales"} and not barrier.expired(state, 9_999)
