"""Transports: one protocol, two logs underneath (Kafka, embedded SQLite)."""

from ._embedded import EmbeddedTransport
from ._kafka import KafkaTransport, TransportError
from ._protocol import Message, OutMessage, Subscription, Transport

__all__ = [
    "EmbeddedTransport",
    "KafkaTransport",
    "Message",
    "OutMessage",
    "Subscription",
    "Transport",
    "TransportError",
]
