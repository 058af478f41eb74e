"""The Kafka transport on aiokafka. ``_client`` holds what the transport and both subscriptions
(at least once, exactly once) share; neither subscription imports the other."""

from ._client import KafkaClient
from ._transport import KafkaTransport

__all__ = ["KafkaClient", "KafkaTransport"]
