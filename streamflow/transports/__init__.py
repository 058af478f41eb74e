"""Transports: one protocol, two logs underneath (Kafka, embedded SQLite)."""

from ._embedded import EmbeddedTransport
from ._kafka import KafkaTransport, TransportError
from ._protocol import Message, OutMessage, Subscription, TransactionalSubscription, Transport
from ._txn import TransactionFailed

__all__ = [
    "EmbeddedTransport",
    "KafkaTransport",
    "Message",
    "OutMessage",
    "Subscription",
    "TransactionFailed",
    "TransactionalSubscription",
    "Transport",
    "TransportError",
]
