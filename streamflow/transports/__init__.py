"""Transports: one protocol, two logs underneath (Kafka, embedded SQLite).

May import ``streamflow.model`` and ``streamflow.errors`` only; the engine, state and the CLIs
reach a log solely through :class:`Transport` and :class:`Subscription`, and pick one with
:func:`make_transport`.
"""

from aiokafka.errors import KafkaError as _KafkaError

from streamflow.errors import TransactionFailed, TransportError
from streamflow.model import Message, OutMessage

from ._factory import make_transport
from ._protocol import Subscription, TopicTail, TransactionalSubscription, Transport
from .kafka import KafkaTransport

RECOVERABLE: tuple[type[BaseException], ...] = (TransactionFailed, _KafkaError, ConnectionError,
                                                TimeoutError)
"""Errors after which an exactly-once consumer rewinds to its last commit and rejoins, rather
than dying: a lost transaction, or the broker going away mid-batch."""

__all__ = [
    "RECOVERABLE",
    "KafkaTransport",
    "Message",
    "OutMessage",
    "Subscription",
    "TopicTail",
    "TransactionFailed",
    "TransactionalSubscription",
    "Transport",
    "TransportError",
    "make_transport",
]
