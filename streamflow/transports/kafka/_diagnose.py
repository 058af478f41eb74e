"""Why a Kafka client could not connect, said once and in time.

aiokafka's bootstrap logs each host's failure and raises only "Unable to bootstrap"; a
listener that never answers, or a refused OAUTHBEARER token (aiokafka takes the broker's error
challenge for success), leaves it retrying until a request timeout or for ever. So a start is
bounded, and when it fails, or is still running after ``EARLY_PROBE_S``, every bootstrap
host is dialled once more, all at once, to learn the reason: refused, credentials, a token,
an untrusted or expired certificate, TLS where plaintext was expected. Only when every host
refuses does the start end early; while one answers it is left to go on (aiokafka may still
be waiting on a dead host before it). The error names the listener, the protocol and
mechanism and what to check; never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    RequestTimedOutError,
    SaslAuthenticationFailed,
)
from aiokafka.protocol.metadata import MetadataRequest

from streamflow.connectors import KafkaOptions, KafkaSecurity
from streamflow.errors import TransportError

START_TIMEOUT_S = 10.0
"""A start that has not connected by then will not; with the probe, all ends within 15 s."""
EARLY_PROBE_S = 2.0
"""A start still running then is probed beside it: a definite refusal ends it at once."""
PROBE_TIMEOUT_S = 3.0
REPROBE_S = 4.0
"""While some host answers but the start has not finished, the hosts are probed this often."""
_CLOSED = "closed"
_UNSURE = ("no answer within", "the broker's metadata names no broker")
_NOISE = ("Unable connect to", "Unable to request metadata", "Unable to update metadata from",
          "No broker metadata found", "Cannot send ")
_NOISY = ("aiokafka", "aiokafka.cluster", "aiokafka.producer.sender")


class _Demote(logging.Filter):
    """aiokafka's bootstrap retries become debug lines: the error raised says more."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_NOISE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


@contextlib.contextmanager
def bootstrap_errors_demoted() -> Iterator[None]:
    """While a start runs (another client's such lines then are debug too, not lost)."""
    demote = _Demote()
    for name in _NOISY:
        logging.getLogger(name).addFilter(demote)
    try:
        yield
    finally:
        for name in _NOISY:
            logging.getLogger(name).removeFilter(demote)


async def start_in_time(start: Awaitable[None], bootstrap: str, security: KafkaSecurity,
                        options: KafkaOptions, host_timeout_s: float = 30.0) -> None:
    """Await a client's ``start()``, or raise one TransportError saying why it cannot.

    ``host_timeout_s`` is the client's request timeout: aiokafka tries the bootstrap hosts in
    turn and waits that long on a silent one, so while a probe finds a host that answers, the
    start is given up to that per host before it is called stuck."""
    task = asyncio.ensure_future(start)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    try:
        hosts = bootstrap_hosts(bootstrap)
        cap = deadline + host_timeout_s * len(hosts)
        with bootstrap_errors_demoted():
            done, _ = await asyncio.wait({task}, timeout=EARLY_PROBE_S)
            while not done:
                reason = await _reason(hosts, security, options)
                if reason is not None and not reason.startswith(_UNSURE):
                    # every host refused: no use waiting (silence may be a slow broker)
                    raise TransportError(_head(bootstrap, security) + reason)
                if reason is not None:  # silence: maybe only slow, up to the start's bound
                    done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
                    if not done:
                        raise TimeoutError
                elif loop.time() >= cap:  # a host answers, yet the client never got there
                    raise TimeoutError
                else:  # a host answers: aiokafka may be waiting on a dead one before it
                    wait = min(cap, loop.time() + REPROBE_S) - loop.time()
                    done, _ = await asyncio.wait({task}, timeout=max(0.0, wait))
            task.result()
    except (KafkaError, OSError, TimeoutError) as e:
        raise await _explain(bootstrap, hosts, security, options, e) from e
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def bootstrap_hosts(bootstrap: str) -> list[tuple[str, int]]:
    """The hosts as aiokafka reads them (port 9092 when none is given, IPv6 in brackets)."""
    try:
        hosts = [(h, p) for h, p, _ in collect_hosts(bootstrap, randomize=False)]
    except ValueError as e:
        raise TransportError(f"Kafka bootstrap {bootstrap!r}: a host's port is not a number "
                             f"({e}); write host:port, [ipv6]:port or host") from None
    if not hosts or any(not h for h, _ in hosts):
        raise TransportError(f"Kafka bootstrap {bootstrap!r}: an empty host")
    return hosts


def _head(bootstrap: str, security: KafkaSecurity) -> str:
    what = security.security_protocol + (
        f"/{security.sasl_mechanism}" if security.sasl_mechanism else "")
    return f"cannot connect to Kafka listener {bootstrap} with {what}: "


async def _reason(hosts: list[tuple[str, int]], security: KafkaSecurity,
                  options: KafkaOptions) -> str | None:
    """What one fresh connection to each host shows, all at once; None if one works.
    Definite only when every host refused (one silent host leaves it unsure)."""
    reasons = await asyncio.gather(*(_one(h, p, security, options) for h, p in hosts))
    if any(r is None for r in reasons):
        return None
    said = [str(r) for r in reasons]
    unsure = [r for r in said if r.startswith(_UNSURE)]
    if unsure:
        return unsure[0] if len(hosts) == 1 else f"{unsure[0]} ({_each(hosts, said)})"
    return said[0] if len(set(said)) == 1 else _each(hosts, said)


def _each(hosts: list[tuple[str, int]], said: list[str]) -> str:
    return "; ".join(f"{_where(h, p)}: {r}" for (h, p), r in zip(hosts, said, strict=True))


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _one(host: str, port: int, security: KafkaSecurity,
               options: KafkaOptions) -> str | None:
    try:
        reason = await asyncio.wait_for(_probe(host, port, security, options), PROBE_TIMEOUT_S)
    except TimeoutError:
        return (f"no answer within {PROBE_TIMEOUT_S:.0f}s: check that this port is a Kafka "
                f"listener expecting {security.security_protocol}")
    return _closed(security) if reason is _CLOSED else reason


async def _explain(bootstrap: str, hosts: list[tuple[str, int]], security: KafkaSecurity,
                   options: KafkaOptions, error: BaseException) -> TransportError:
    reason = await _reason(hosts, security, options)
    if reason is None:  # one connection works: the client failed for another reason
        reason = ("the client did not start in time, though a bootstrap host answers"
                  if isinstance(error, TimeoutError) else _said(error, options))
    return TransportError(_head(bootstrap, security) + reason)


def _said(e: BaseException, options: KafkaOptions) -> str:
    """An exception's own words (aiokafka's never hold the password; masked all the same)."""
    text = f"{type(e).__name__}: {e}".rstrip(": ")
    secret = options.get("sasl_plain_password")
    return text.replace(str(secret), "**********") if secret else text


async def _probe(host: str, port: int, security: KafkaSecurity,
                 options: KafkaOptions) -> str | None:
    """Why one connection fails (``_CLOSED``: the broker hung up); None if it works."""
    keys = ("ssl_context", "security_protocol", "sasl_mechanism", "sasl_plain_username",
            "sasl_plain_password", "sasl_oauth_token_provider")
    try:
        conn = await create_conn(host, port, request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
                                 **{k: options[k] for k in keys if k in options})
    except (RequestTimedOutError, KafkaTimeoutError) as e:  # silence, maybe only a slow broker
        raise TimeoutError from e
    except SaslAuthenticationFailed:
        return ("the broker refused the credentials: check sasl_username and sasl_password "
                "(or sasl_password_file), or the OAUTHBEARER token provider's token, and that "
                "the user exists for this mechanism")
    except ssl.SSLCertVerificationError as e:
        return (f"the broker's certificate is not trusted ({e.verify_message}): check that "
                "ssl_cafile is the CA that signed the broker's certificate and that the "
                "certificate names the host dialled")
    except ssl.SSLError as e:
        return (f"the TLS handshake failed ({e.reason or e}): check that this listener "
                "speaks TLS (security_protocol SSL or SASL_SSL) and that ssl_cafile is right")
    except ConnectionResetError as e:
        if security.tls:
            return ("the listener reset the TLS handshake: it likely speaks plaintext. Check "
                    "security_protocol (PLAINTEXT or SASL_PLAINTEXT for a plaintext listener)")
        return _said(e, options)
    except ConnectionRefusedError:
        return ("nothing accepts connections there: check the host and port, and that the "
                "broker runs (`streamflow services up kafka` starts the local one; unset "
                "STREAMFLOW_KAFKA_BOOTSTRAP for the embedded transport)")
    except KafkaConnectionError as e:
        return _CLOSED if "closed" in str(e) else _said(e, options)
    except (OSError, KafkaError) as e:
        return (f"{_said(e, options)}: check security_protocol and sasl_mechanism against the "
                "listener's (its protocol and enabled mechanisms)")
    try:  # aiokafka takes an OAUTHBEARER error challenge for success; the broker then
        # answers metadata naming no broker, and the client waits for ever
        meta = await conn.send(MetadataRequest([]))
    except (RequestTimedOutError, KafkaTimeoutError) as e:
        raise TimeoutError from e
    except (KafkaError, OSError) as e:
        return _said(e, options)
    finally:
        conn.close()
    if meta.brokers:
        return None
    if security.sasl_mechanism == "OAUTHBEARER":
        return ("the broker refused the token (its metadata names no broker after the "
                "OAUTHBEARER exchange): check the token provider's token (expiry, subject, "
                "scope, signature)")
    return "the broker's metadata names no broker: check that it is a Kafka broker and ready"


def _closed(security: KafkaSecurity) -> str:
    """The broker hung up without a word: what each side's setting makes likely."""
    if security.tls:
        expiry = _expired(security.ssl_certfile)
        if expiry:
            return (f"the broker closed the connection after the TLS handshake: the client "
                    f"certificate ssl_certfile {security.ssl_certfile} expired on {expiry}; "
                    "renew it")
        return ("the broker closed the connection after the TLS handshake: it rejected the "
                "client certificate, or the listener expects another protocol. Check "
                "ssl_certfile (present, signed by a CA the broker trusts, not expired) and "
                "security_protocol (SASL_SSL listeners need sasl_mechanism too)")
    return ("the broker closed the connection without answering: the listener likely "
            "expects TLS or SASL. Check security_protocol (SSL or SASL_SSL for a TLS "
            "listener, with ssl_cafile) and sasl_mechanism against the listener's settings")


def _expired(certfile: Path | None) -> str | None:
    """The certificate's notAfter if it has passed (CPython's own PEM decoder, best effort)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if certfile is None or decode is None:
        return None
    with contextlib.suppress(Exception):
        not_after = str(decode(str(certfile))["notAfter"])
        if ssl.cert_time_to_seconds(not_after) < time.time():
            return not_after
    return None
