"""The barrier state machine, property-based: exactly once per partition, whatever the order."""

from __future__ import annotations

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


@settings(max_examples=100, deadline=None)
@given(arrivals=arrivals)
def test_a_new_version_refires_only_when_asked(arrivals: list[tuple[str, str]]) -> None:
    for policy, expect_refire in (("ignore", False), ("refire", True)):
        barrier = Barrier("report", INPUTS, AllOf(on_new_version=policy))  # type: ignore[arg-type]
        states: dict[str, PartitionState] = {}
        versions: dict[tuple[str, str], int] = {}
        fires: dict[str, int] = {}
        for partition, asset in [*arrivals, *arrivals]:  # the second pass brings new versions
            v = versions[(partition, asset)] = versions.get((partition, asset), -1) + 1
            state = states.setdefault(partition, PartitionState(partition, 0, 0))
            if barrier.offer(state, asset, slot(partition, asset, v)) is not None:
                fires[partition] = fires.get(partition, 0) + 1
        if not expect_refire:
            assert all(n == 1 for n in fires.values())
        else:
            assert all(n >= 1 for n in fires.values())


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
