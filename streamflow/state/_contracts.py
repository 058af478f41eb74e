"""Versioned contracts, checked when a pipeline starts rather than discovered mid-stream.

Every asset's contract signature is registered on the ``<namespace>.contracts`` topic (one
record per asset and version, so every version's shape stays readable). A worker refuses to
start when its contract changed incompatibly, or changed at all without a version bump:
records already on the topic, and other pipelines reading it, rely on the registered shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.errors import PydanticUserError

from streamflow.errors import ContractError
from streamflow.model import Asset, Message, OutMessage, contracts_topic
from streamflow.transports import Transport

COSMETIC = frozenset({"title", "description", "examples", "default"})
"""Schema keys that document a field without changing what validates."""
_NAMED = frozenset({"properties", "patternProperties", "$defs"})
"""Keys whose children are names (a field may be called ``title``), not schema keywords."""

Signature = dict[str, dict[str, Any]]

log = logging.getLogger("streamflow.state")


def signature(model: type[BaseModel]) -> Signature:
    """Each field's normalized JSON schema and whether it is required: nested models are
    inlined so they compare by shape, and cosmetic keys are dropped."""
    try:
        schema = model.model_json_schema(mode="validation")
    except PydanticUserError:  # a type with no JSON schema: compare its annotation instead
        return {n: {"type": {"python": repr(f.annotation)}, "required": f.is_required()}
                for n, f in model.model_fields.items()}
    defs: dict[str, Any] = schema.get("$defs", {})
    root = _normalize(schema, defs, ())
    required = set(root.get("required", []))
    return {name: {"type": prop, "required": name in required}
            for name, prop in root.get("properties", {}).items()}


def _normalize(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_normalize(x, defs, seen) for x in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    ref = node.pop("$ref", None)
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen:  # a recursive model: name it rather than inline it forever
            return {"$ref": name}
        node = {**defs.get(name, {}), **node}
        seen = (*seen, name)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:  # older pydantic wraps a described $ref
        del node["allOf"]
        return _normalize({**all_of[0], **node}, defs, seen)
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in COSMETIC or k == "$defs":
            continue
        if k in _NAMED and isinstance(v, dict):
            out[k] = {n: _normalize(s, defs, seen) for n, s in v.items()}
        elif k == "required" and isinstance(v, list):
            out[k] = sorted(v)
        else:
            out[k] = _normalize(v, defs, seen)
    return out


def render(t: Any) -> str:
    """A field type as a person reads it: ``integer``, ``string(date-time) | null``."""
    if not isinstance(t, dict):
        return orjson.dumps(t).decode()
    if "anyOf" in t:
        return " | ".join(render(x) for x in t["anyOf"])
    if "enum" in t:
        return "enum(" + ", ".join(orjson.dumps(v).decode() for v in t["enum"]) + ")"
    if "const" in t:
        return f"const {orjson.dumps(t['const']).decode()}"
    if "$ref" in t:
        return str(t["$ref"])
    kind = t.get("type", "any")
    if kind == "array":
        return f"array[{render(t.get('items', {}))}]"
    if kind == "object" and "properties" in t:
        req = set(t.get("required", []))
        return "object{" + ", ".join(f"{n}{'' if n in req else '?'}: {render(s)}"
                                     for n, s in t["properties"].items()) + "}"
    shown = "|".join(kind) if isinstance(kind, list) else str(kind)
    return shown + (f"({t['format']})" if "format" in t else "")


def _render_pair(old: Any, new: Any) -> tuple[str, str]:
    a, b = render(old), render(new)
    if a == b:  # same kind, different constraints: show them in full
        opt = orjson.OPT_SORT_KEYS
        a, b = orjson.dumps(old, option=opt).decode(), orjson.dumps(new, option=opt).decode()
    return a, b


def changes(old: Signature, new: Signature) -> tuple[list[str], list[str]]:
    """(incompatible, compatible) differences. Only an added optional field is compatible:
    records written under either shape must validate under the other."""
    bad: list[str] = []
    for name, was in old.items():
        now = new.get(name)
        if now is None:
            bad.append(f"field {name!r} was removed")
            continue
        if now["type"] != was["type"]:
            a, b = _render_pair(was["type"], now["type"])
            bad.append(f"field {name!r} changed type from {a} to {b}")
        if now["required"] and not was["required"]:
            bad.append(f"field {name!r} became required")
        elif was["required"] and not now["required"]:
            bad.append(f"field {name!r} became optional (readers of the old shape require it)")
    good: list[str] = []
    for name in new.keys() - old.keys():
        if new[name]["required"]:
            bad.append(f"new field {name!r} is required (give it a default to make it optional)")
        else:
            good.append(f"added optional field {name!r}")
    return bad, sorted(good)


def compare(old: Signature, new: Signature) -> list[str]:
    """Why records of one shape would not validate under the other; empty when compatible."""
    return changes(old, new)[0]


def fold(messages: Iterable[Message]) -> dict[str, dict[int, dict[str, Any]]]:
    """Registered records by asset, then version; the latest per key wins, bad ones are
    skipped (a foreign producer must not stop every worker)."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for m in messages:
        try:
            rec = orjson.loads(m.value)
            if rec.get("v", 1) != 1:  # a newer StreamFlow's registration: not ours to judge
                log.warning("contract registry: skipping %s of format v%s (upgrade StreamFlow "
                            "to read it)", m.key, rec.get("v"))
                continue
            out.setdefault(str(rec["asset"]), {})[int(rec["version"])] = rec
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            continue
    return out


def _check(asset: Asset[Any], sig: Signature, versions: dict[int, dict[str, Any]]
           ) -> tuple[str | None, str | None]:
    """(problem, note) for one asset; a note means its current version is to be registered."""
    name, v, contract = asset.name, asset.version, asset.contract.__name__
    if not versions:
        return None, f"registered asset {name} contract {contract} v{v}"
    top = max(versions)
    if v > top:
        bad, good = changes(versions[top]["fields"], sig)
        if bad:
            return (f"asset {name!r}: contract {contract} v{v} is incompatible with the "
                    f"registered v{top}: {'; '.join(bad)}. Keep the old fields and add new ones "
                    "as optional, or publish the new shape as a new asset."), None
        what = ", ".join(good) or "no field changes"
        return None, f"asset {name} contract evolved v{top} -> v{v} (compatible: {what})"
    rec = versions.get(v)
    if rec is None:
        return (f"asset {name!r}: contract {contract} v{v} is older than the registered "
                f"v{top} and v{v} was never registered; deploy the v{top} contract"), None
    if rec.get("fields") == sig:
        return None, None
    bad, _ = changes(rec["fields"], sig)
    if not bad:
        return (f"asset {name!r}: contract {contract} changed without a version bump "
                f"(registered as v{v}); set Asset(..., version={top + 1})"), None
    return (f"asset {name!r}: contract {contract} v{v} differs from the registered v{v} and "
            f"the version was not bumped: {'; '.join(bad)}. Restore the v{v} shape, or keep "
            f"the old fields, add new ones as optional and set Asset(..., version={top + 1})"
            ), None


async def check_contracts(transport: Transport, namespace: str,
                          assets: Iterable[Asset[Any]]) -> list[str]:
    """Check every asset against the registry and register new versions; returns notes to
    log. Raises one ``ContractError`` naming every problem, and registers nothing then."""
    topic = contracts_topic(namespace)
    await transport.ensure_topics([], compacted=[topic])
    registry = fold(await transport.read_topic(topic))
    problems: list[str] = []
    notes: list[str] = []
    out: list[OutMessage] = []
    now = int(time.time() * 1000)
    for asset in assets:
        sig = signature(asset.contract)
        problem, note = _check(asset, sig, registry.get(asset.name, {}))
        if problem is not None:
            problems.append(problem)
        elif note is not None:
            notes.append(note)
            body = {"v": 1, "asset": asset.name, "version": asset.version,
                    "contract": asset.contract.__name__, "fields": sig, "registered_ms": now}
            out.append(OutMessage(topic, orjson.dumps(body),
                                  f"{asset.name}@v{asset.version}".encode(), []))
    if problems:
        raise ContractError("contract check failed:\n" + "\n".join(problems))
    if out:
        await transport.publish(out)
    return notes
