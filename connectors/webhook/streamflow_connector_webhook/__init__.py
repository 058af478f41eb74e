"""The ``webhook`` connector: an HTTP endpoint source and an HTTP POST sink (aiohttp).

A plugin of the public SDK (``streamflow.connectors``) only. aiohttp is the optional
``webhook`` extra (``pip install 'streamflow[webhook]'``), imported at setup.

Source: a request is answered 202 only once its records are durable on the transport (the
engine calls ``ack`` after publishing), so a client that got 202 may forget the data and a
client that got anything else should retry. Requests are signed per Standard Webhooks (or carry
a bearer token), optionally over TLS; the ``webhook-id`` is the idempotency key: record ids
derive from it (else from the body's hash), so a retried request produces the same arrival ids
and dedupes downstream, and a claim on a compacted topic binds it to its body for every worker,
so a reuse with another body is refused with 422.

Sink: each chunk of ``batch_size`` records is POSTed as a JSON array with an
``Idempotency-Key`` derived from the chunk's arrival ids, retried with backoff on 5xx, 408, 429
and connection errors; when it gives up it raises and the engine dead-letters the batch.
"""

from streamflow.connectors import ConnectorSpec

from ._config import WebhookSourceConfig
from ._sink import WebhookDeliveryError, WebhookSink, WebhookSinkConfig, idempotency_key
from ._source import WebhookSource

WEBHOOK = ConnectorSpec(
    name="webhook",
    source=WebhookSource,
    sink=WebhookSink,
    source_config=WebhookSourceConfig,
    sink_config=WebhookSinkConfig,
    extra="webhook",
)

__all__ = [
    "WEBHOOK",
    "WebhookDeliveryError",
    "WebhookSink",
    "WebhookSinkConfig",
    "WebhookSource",
    "WebhookSourceConfig",
    "idempotency_key",
]
