"""Versioned contracts: checked at pipeline start, evolved compatibly, violations dead-lettered."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from streamflow import Asset, ContractError, Pipeline, Settings, run_pipeline
from streamflow.connectors import ConnectorContext
from streamflow.connectors.testing import MemorySink, MemorySource
from streamflow.model import OutMessage, contracts_topic
from streamflow.state import check_contracts, compare, signature
from streamflow.transports import make_transport

from .helpers import memory_source, read_topic, values


class ReadingV1(BaseModel):
    id: int
    value: float


class ReadingV2(BaseModel):
    """Adds an optional field: compatible."""

    id: int
    value: float = Field(description="cosmetic changes do not count")
    unit: str | None = None


class ReadingBad(BaseModel):
    """Changes a field's type: incompatible."""

    id: int
    value: str


class Labelled(BaseModel):
    id: int
    unit: str


def producer(name: str, asset: Asset[Any], batch: list[dict[str, object]]) -> Pipeline:
    p = Pipeline(name)
    p.source(memory_source([batch]), asset=asset)
    return p


def labeller(name: str, readings: Asset[Any], source: MemorySource,
             out: MemorySink) -> Pipeline:
    """readings → label (unit defaults to "none") → ``out``."""
    labelled = Asset(f"{readings.name}-labelled", Labelled, key="id")
    p = Pipeline(name)
    p.source(source, asset=readings)

    @p.stage(inputs=[readings], output=labelled)
    def label(r: BaseModel) -> Labelled:
        return Labelled(id=r.id, unit=getattr(r, "unit", None) or "none")  # type: ignore[attr-defined]

    p.sink(out, asset=labelled)
    return p


# -- signature and compare ----------------------------------------------------------------


def test_added_optional_field_and_cosmetic_changes_are_compatible() -> None:
    assert compare(signature(ReadingV1), signature(ReadingV2)) == []


def test_incompatible_changes_name_the_field() -> None:
    class Old(BaseModel):
        id: int
        gone: str
        amount: float
        note: str | None = None

    class New(BaseModel):
        id: int
        amount: str
        note: str
        must: int

    problems = compare(signature(Old), signature(New))
    assert "field 'gone' was removed" in problems
    assert "field 'amount' changed type from number to string" in problems
    assert "field 'note' became required" in problems
    assert "new field 'must' is required (give it a default to make it optional)" in problems


def test_nested_models_compare_by_shape() -> None:
    class In1(BaseModel):
        title: str  # a field named like a cosmetic schema key is still a field

    class In2(BaseModel):
        title: int

    class Out1(BaseModel):
        inner: In1

    class Out2(BaseModel):
        inner: In2

    class Out1Again(BaseModel):
        inner: In1 = Field(description="class names and docs are cosmetic")

    assert signature(Out1)["inner"]["type"]["properties"] == {"title": {"type": "string"}}
    assert compare(signature(Out1), signature(Out1Again)) == []
    [problem] = compare(signature(Out1), signature(Out2))
    assert problem.startswith("field 'inner' changed type from object{title: string} to")


# -- at pipeline start, on both transports ------------------------------------------------


async def test_compatible_evolution_registers_and_old_records_flow_on(
    settings: Settings
) -> None:
    v1 = Asset("readings-evo", ReadingV1, key="id")
    v2 = Asset("readings-evo", ReadingV2, key="id", version=2)
    first = await run_pipeline(producer("evo-v1", v1, [{"id": 1, "value": 1.5},
                                                       {"id": 2, "value": 2.5}]), settings)
    assert first.records_in == 2

    # A v2 pipeline reads the v1 records already on the topic, and its own v2 ones.
    out = MemorySink()
    source = memory_source([[{"id": 3, "value": 3.5, "unit": "C"}]])
    summary = await run_pipeline(labeller("evo-v2", v2, source, out), settings)

    assert (summary.records_out, summary.dead_lettered) == (3, 0)
    assert sorted((r["id"], r["unit"]) for r in out.values()) == [
        (1, "none"), (2, "none"), (3, "C")]
    registry = values(await read_topic(settings, contracts_topic(settings.namespace)))
    mine = {(r["version"], r["contract"]) for r in registry if r["asset"] == "readings-evo"}
    assert mine == {(1, "ReadingV1"), (2, "ReadingV2")}
    v2_fields = next(r["fields"] for r in registry if r["version"] == 2
                     and r["asset"] == "readings-evo")
    assert v2_fields["unit"]["required"] is False  # type: ignore[index]


async def test_incompatible_version_is_refused_before_anything_runs(
    settings: Settings
) -> None:
    await run_pipeline(producer("bad-v1", Asset("readings-bad", ReadingV1, key="id"),
                                [{"id": 1, "value": 1.5}]), settings)

    class Watched(MemorySink):
        set_up = False

        async def setup(self, ctx: ConnectorContext) -> None:
            self.set_up = True

    source = memory_source([[{"id": 2, "value": "hot"}]])
    out = Watched()
    v2 = Asset("readings-bad", ReadingBad, key="id", version=2)
    with pytest.raises(ContractError) as err:
        await run_pipeline(labeller("bad-v2", v2, source, out), settings)

    msg = str(err.value)
    assert "asset 'readings-bad': contract ReadingBad v2 is incompatible with the registered " \
           "v1: field 'value' changed type from number to string" in msg
    assert "add new ones as optional" in msg
    assert source.acked == 0 and not out.set_up and not out.written and not out.rows
    on_topic = values(await read_topic(settings, f"{settings.namespace}.readings-bad"))
    assert on_topic == [{"id": 1, "value": 1.5}], "the refused run wrote nothing"
    registry = values(await read_topic(settings, contracts_topic(settings.namespace)))
    assert [r["version"] for r in registry if r["asset"] == "readings-bad"] == [1]


async def test_a_changed_shape_without_a_version_bump_is_refused(
    settings: Settings
) -> None:
    a1, b1 = Asset("same-a", ReadingV1), Asset("same-b", ReadingV1)
    p = producer("same-v1", a1, [{"id": 1, "value": 1.0}])
    p.source(memory_source([[{"id": 1, "value": 1.0}]]), asset=b1)
    await run_pipeline(p, settings)

    # Both problems are reported at once, one line each.
    p = producer("same-v1-again", Asset("same-a", ReadingV2), [{"id": 2, "value": 2.0}])
    p.source(memory_source([[{"id": 2, "value": "x"}]]), asset=Asset("same-b", ReadingBad))
    with pytest.raises(ContractError) as err:
        await run_pipeline(p, settings)

    a_line, b_line = str(err.value).splitlines()[1:]
    assert "asset 'same-a'" in a_line and "changed without a version bump" in a_line
    assert "set Asset(..., version=2)" in a_line
    assert "asset 'same-b'" in b_line and "the version was not bumped" in b_line
    assert "field 'value' changed type from number to string" in b_line


async def test_older_versions_check_against_their_own_registration(settings: Settings) -> None:
    transport = make_transport(settings)
    await transport.start()
    try:
        ns = settings.namespace
        v1, v3 = Asset("old", ReadingV1), Asset("old", ReadingV2, version=3)
        assert await check_contracts(transport, ns, [v1]) == [
            "registered asset old contract ReadingV1 v1"]
        assert await check_contracts(transport, ns, [v3]) == [
            "asset old contract evolved v1 -> v3 (compatible: added optional field 'unit')"]
        assert await check_contracts(transport, ns, [v1, v3]) == [], "rolling deploy is fine"
        with pytest.raises(ContractError, match="v2 is older than the registered v3"):
            await check_contracts(transport, ns, [Asset("old", ReadingV2, version=2)])
        with pytest.raises(ContractError, match="'value' changed type from number to string"):
            await check_contracts(transport, ns, [Asset("old", ReadingBad)])
    finally:
        await transport.close()


# -- at runtime ---------------------------------------------------------------------------


async def test_records_violating_the_contract_are_dead_lettered_and_good_ones_flow(
    settings: Settings
) -> None:
    ns = settings.namespace
    readings = Asset("readings-rt", ReadingV1, key="id")
    transport = make_transport(settings)
    await transport.start()
    await transport.ensure_topics([readings.topic(ns)])
    await transport.publish([
        OutMessage(readings.topic(ns), b"\xff\x00 not json", None, []),
        OutMessage(readings.topic(ns), b'{"id": 8, "value": "hot"}', b"8",
                   [("sf-asset", b"readings-rt"), ("sf-contract-version", b"1")]),
    ])
    await transport.close()
    source = memory_source([[{"id": 1, "value": 1.0}, {"id": "x", "value": 2.0}]])
    out = MemorySink()

    summary = await run_pipeline(labeller("runtime", readings, source, out), settings)

    assert summary.drained and (summary.records_out, summary.dead_lettered) == (1, 3)
    assert [r["id"] for r in out.values()] == [1]
    dead = values(await read_topic(settings, settings.dead_letter_topic))
    reasons = sorted(str(d["reason"]) for d in dead)
    by_kind = {str(d["kind"]): d for d in dead if d["kind"] == "source"}
    assert "field 'id'" in str(by_kind["source"]["reason"])
    assert "'x'" in str(by_kind["source"]["reason"])
    assert all("[contract ReadingV1 v1]" in r for r in reasons)
    assert any("field 'value'" in r and "'hot'" in r for r in reasons)
    assert any("Invalid JSON" in r for r in reasons)
    from_topic = [d for d in dead if d["stage"] == "label"]
    assert len(from_topic) == 2
    assert all(d["origin"]["topic"] == readings.topic(ns) for d in from_topic)  # type: ignore[index]
