"""The ``kafka`` connector: read a topic outside StreamFlow, or deliver an asset to one.

A plugin of the public SDK (``streamflow.connectors``) only; aiokafka is a core dependency.

The source reads every partition of the topic itself (manual assignment, read_committed) and
commits the consumer group's offsets only in ``ack``, so a restart resumes right after the last
batch whose arrivals are durable. The sink is an idempotent ``acks=all`` producer; Kafka cannot
upsert, so it keys each message (for compacted topics) and stamps the arrival id in a header
(for consumers that dedupe).
"""

from streamflow.connectors import ConnectorSpec

from ._sink import ARRIVAL_ID_HEADER, PARTITION_HEADER, KafkaSink, KafkaSinkConfig
from ._source import KafkaSource, KafkaSourceConfig

KAFKA = ConnectorSpec(
    name="kafka",
    source=KafkaSource,
    sink=KafkaSink,
    source_config=KafkaSourceConfig,
    sink_config=KafkaSinkConfig,
)

__all__ = [
    "ARRIVAL_ID_HEADER",
    "KAFKA",
    "PARTITION_HEADER",
    "KafkaSink",
    "KafkaSinkConfig",
    "KafkaSource",
    "KafkaSourceConfig",
]
