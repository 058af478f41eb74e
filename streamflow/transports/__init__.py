"""Transports: one protocol, two logs underneath (Kafka, embedded SQLite)."""

from aiokafka.errors import KafkaError as _KafkaError

from ._embedded import EmbeddedTransport
from ._kafka import KafkaTransport, TransportError
from ._protocol import Message, OutMessage, Subscription, TransactionalSubscription, Transport
from ._txn import TransactionFailed

RECOVERABLE: tuple[type[BaseException], ...] = (TransactionFailed, _KafkaError, ConnectionError,
                                                TimeoutError)
"""Errors after which an exactly-once consumer rewinds to its last commit and rejoins, rather
than dying: a lost transaction, or the broker going away mid-batch."""

__all__ = [
    "RECOVERABLE",
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
