"""How many replicas the topics StreamFlow creates get, and a warning for those below it.

A lost broker must lose no acknowledged record: with ``acks=all`` that needs each topic on
several brokers (``replication_factor``) and a floor of replicas per write
(``min_insync_replicas``). Unset, both follow the broker's defaults, so the dev broker's 1 and a
cluster's 3 need no setting. A factor above the brokers alive is capped, with a warning, rather
than refused: one settings file then serves a laptop's single broker and the production cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from streamflow.errors import TransportError

log = logging.getLogger("streamflow.transports.kafka")

MIN_ISR = "min.insync.replicas"
DEFAULT_RF = "default.replication.factor"
TOPIC_EXISTS = 36  # TOPIC_ALREADY_EXISTS: a racing worker made it first


@dataclass(frozen=True, slots=True)
class Replication:
    """What the settings ask for; None: the broker's default."""

    factor: int | None = None
    min_insync: int | None = None


@dataclass(frozen=True, slots=True)
class Resolved:
    """What the topics of one creation get, from the brokers alive then."""

    factor: int
    min_insync: int | None
    brokers: int


_SETTING = "the setting replication_factor"
_DEFAULT = f"the broker's {DEFAULT_RF}"


async def resolve(admin: AIOKafkaAdminClient, wanted: Replication, said: set[str]) -> Resolved:
    """The factor to create topics with now: the setting or the broker's default, capped by
    the brokers alive (asked again at every creation: a broker down once must not leave every
    later topic short). A capped factor also caps ``min.insync.replicas``, the setting's or the
    broker's, or no ``acks=all`` write could succeed. ``said``: warnings already logged."""
    nodes = [b["node_id"] for b in (await admin.describe_cluster())["brokers"]]
    if not nodes:
        raise TransportError("Kafka reports no live broker: cannot create topics")
    asked, source = wanted.factor, _SETTING
    if asked is None:
        asked, source = await _broker_default(admin, nodes[0]), _DEFAULT
    factor, insync = min(asked, len(nodes)), wanted.min_insync
    if factor < asked:
        _once(said, "replication_factor %d asked for (%s), but the Kafka cluster has %d live "
              "broker(s): topics created now get %d replica(s). Start more brokers, or set "
              "replication_factor to at most %d to silence this.",
              asked, source, len(nodes), factor, factor)
        if insync is None:
            insync = await _capped_broker_min_isr(admin, nodes[0], factor, said)
    if insync is not None and insync > factor:
        _once(said, "min_insync_replicas %d is above the %d replica(s) topics created now get: "
              "capped to %d, or no write could be acknowledged", insync, factor, factor)
        insync = factor
    return Resolved(factor, insync, len(nodes))


def _once(said: set[str], message: str, *args: object) -> None:
    text = message % args
    if text not in said:
        said.add(text)
        log.warning("%s", text)


async def _capped_broker_min_isr(admin: AIOKafkaAdminClient, node: int, factor: int,
                                 said: set[str]) -> int | None:
    """The ``min.insync.replicas`` a capped topic needs: None (the broker's) when it is at
    most ``factor``, else ``factor``, also when the broker's cannot be read."""
    broker, why = await _broker_config(admin, node, MIN_ISR)
    if broker is None:
        _once(said, "cannot read %s of Kafka broker %d (%s): topics created now with %d "
              "replica(s) get min.insync.replicas=%d, at most their replicas, or no acks=all "
              "write could succeed; set min_insync_replicas to choose it",
              MIN_ISR, node, why, factor, factor)
        return factor
    if int(broker) <= factor:
        return None
    _once(said, "the broker's min.insync.replicas %s is above the %d replica(s) topics created "
          "now get: they get min.insync.replicas=%d, or no acks=all write could succeed",
          broker, factor, factor)
    return factor


async def _broker_default(admin: AIOKafkaAdminClient, node: int) -> int:
    """The broker's ``default.replication.factor``. Unreadable (no DescribeConfigs right on
    the cluster), it is an error: guessing 1 would leave a production topic on one broker."""
    value, why = await _broker_config(admin, node, DEFAULT_RF)
    if value is None:
        raise TransportError(
            f"cannot read {DEFAULT_RF} of Kafka broker {node} ({why}): set "
            "replication_factor (STREAMFLOW_REPLICATION_FACTOR) to the replicas StreamFlow's "
            "topics should have")
    return int(value)


async def _broker_config(admin: AIOKafkaAdminClient, node: int,
                         key: str) -> tuple[str | None, str]:
    """A broker's setting, or None and why it could not be read."""
    res = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.BROKER, str(node), {key: None})])
    for r in (r for resp in res for r in resp.resources):
        value = {e[0]: e[1] for e in r[4]}.get(key)
        if not r[0] and value is not None:
            return str(value), ""
        return None, r[1] or (for_code(r[0]).__name__ if r[0] else "not in its answer")
    return None, "no answer for it"


def new_topic(name: str, partitions: int, resolved: Resolved,
              configs: dict[str, str] | None) -> NewTopic:
    topic_configs = dict(configs or {})
    if resolved.min_insync is not None:
        topic_configs[MIN_ISR] = str(resolved.min_insync)
    return NewTopic(name, partitions, resolved.factor, topic_configs=topic_configs or None)


async def create(admin: AIOKafkaAdminClient, new: Sequence[NewTopic]) -> None:
    """Create the topics; a broker's refusal (too few brokers for the factor, a bad config)
    is an error naming the topic, not a topic that silently never appears."""
    response = await admin.create_topics(list(new))
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        if code and code != TOPIC_EXISTS:
            raise TransportError(
                f"Kafka refused to create topic {topic}: "
                f"{message or for_code(code).__name__} (error {code})")


async def warn_below(admin: AIOKafkaAdminClient, topics: Sequence[str], wanted: Replication,
                     warned: set[str]) -> None:
    """One warning per existing topic with fewer replicas, or a lower min.insync.replicas,
    than the settings ask (Kafka never raises either by itself); each capped by the brokers
    alive, as a new topic's. Without settings nothing is compared: the broker's defaults
    would need a right (DescribeConfigs) a worker that creates no topic may lack."""
    topics = [t for t in topics if t not in warned]
    if not topics or (wanted.factor is None and wanted.min_insync is None):
        return
    brokers = len((await admin.describe_cluster())["brokers"]) or 1
    factor = min(wanted.factor or brokers, brokers)
    low: dict[str, int] = {}
    for t in await admin.describe_topics(topics) if wanted.factor is not None else ():
        replicas = [len(p["replicas"]) for p in t["partitions"]]
        if not t["error_code"] and replicas and min(replicas) < factor:
            low[t["topic"]] = min(replicas)
    for topic, has in low.items():
        warned.add(topic)
        log.warning(
            "Kafka topic %s has %d replica(s), below replication_factor %d: a broker's loss "
            "can lose its records or stop it. Raise it with kafka-reassign-partitions.sh (a "
            "reassignment naming %d brokers per partition), or delete the topic so StreamFlow "
            "recreates it (its records go with it).", topic, has, factor, factor)
    if wanted.min_insync is not None:
        await _warn_min_insync(admin, [t for t in topics if t not in warned],
                               min(wanted.min_insync, factor), warned)


async def _warn_min_insync(admin: AIOKafkaAdminClient, topics: Sequence[str], floor: int,
                           warned: set[str]) -> None:
    if not topics:
        return
    described = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t, {MIN_ISR: None}) for t in topics])
    for res in (r for resp in described for r in resp.resources):
        current = {e[0]: e[1] for e in res[4]}.get(MIN_ISR)
        if res[0] or current is None or int(current) >= floor:
            continue
        warned.add(res[3])
        log.warning(
            "Kafka topic %s has min.insync.replicas=%s, below min_insync_replicas %d: a write "
            "is acknowledged with fewer copies than asked. Raise it with kafka-configs.sh "
            "--alter --entity-type topics --entity-name %s --add-config "
            "min.insync.replicas=%d.", res[3], current, floor, res[3], floor)
