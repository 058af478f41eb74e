"""Settings from the environment and an optional TOML file; the embedded transport by default."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from streamflow.connectors import KafkaSecurity
from streamflow.errors import ConfigError

from ._topics import DEFAULT_NAMESPACE, dead_letter_topic

ENV_PREFIX = "STREAMFLOW_"
CONFIG_FILES = ("streamflow.toml",)
KAFKA_SECURITY_KEYS = {
    **{f"kafka_{name}": name for name in KafkaSecurity.model_fields},
    **{f"kafka_{name}_file": f"{name}_file" for name in KafkaSecurity.SECRETS},
}
"""Flat settings (``kafka_sasl_password``, ``STREAMFLOW_KAFKA_SASL_PASSWORD_FILE``) that fill
``Settings.kafka_security``."""


class Settings(BaseModel):
    """What a worker needs to know about its surroundings.

    Precedence: explicit arguments, then ``STREAMFLOW_*`` variables, then the file named by
    ``STREAMFLOW_CONFIG`` (or ``./streamflow.toml``), then these defaults.
    """

    # Inputs stay out of validation errors: they may hold http_token.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    kafka_bootstrap: str | None = None
    kafka_security: KafkaSecurity = Field(
        default_factory=KafkaSecurity,
        description="TLS and SASL towards Kafka, from the kafka_* settings (see "
                    "KAFKA_SECURITY_KEYS); every Kafka client StreamFlow makes uses it")
    state_dir: Path = Path(".streamflow")
    partitions: int = Field(4, ge=1)
    namespace: str = Field(DEFAULT_NAMESPACE, pattern=r"^[A-Za-z0-9_-]+$",
                           description="prefix of every topic and consumer group")
    dead_letter_topic: str = Field("", description="default: <namespace>.dead-letters")
    drain_timeout_s: float = Field(30.0, gt=0)
    poll_batch: int = Field(500, ge=1)
    commit_interval_s: float = Field(
        0.1, ge=0, description="how often consumers commit offsets while busy (0: every batch)")
    http_port: int | None = Field(
        9464, ge=0, le=65535,
        description="worker HTTP port for /healthz, /readyz, /metrics, /status "
                    "(0: any free port; unset with STREAMFLOW_HTTP_PORT=off)")
    http_host: str = "127.0.0.1"
    http_token: SecretStr | None = Field(
        None, description="require `Authorization: Bearer <token>` for /status and /metrics "
                          "(/healthz and /readyz stay open); unset: no token")
    status_lag_ttl_s: float = Field(
        5.0, ge=0, description="how long one reading of consumer lag serves /status and "
                               "/metrics (each reading asks the broker)")
    exactly_once: bool = Field(
        False, description="consume, run and produce in one transaction per input partition "
                           "(Kafka transactions; one SQLite transaction on the embedded log)")
    worker_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$",
        description="a stable name per worker process (Kafka static membership): a restarted "
                    "worker takes its partitions back without waiting for the session timeout")
    session_timeout_s: float = Field(
        6.0, ge=6, le=300, description="how long Kafka waits for a silent worker before moving "
                                       "its partitions (6 s is the broker's minimum)")
    tune_gc: bool = Field(
        True, description="freeze start-up objects and collect garbage less often while "
                          "running: the cyclic collector cost 11% of a map stage's CPU")
    max_record_bytes: int = Field(
        256 * 1024, ge=1024, le=900 * 1024,
        description="arrivals larger than this are dead-lettered instead of processed")
    backfill_batch: int = Field(
        16, ge=1, description="backfill records a stage handles between two looks at its live "
                              "input: smaller keeps live latency lower while a backfill runs")
    dedupe_window_s: float = Field(
        86_400.0, gt=0, description="how long a stage remembers the run ids it fired, so a "
                                    "duplicated input skips its run (older ones run again)")
    dedupe_max_runs: int = Field(
        1_000_000, ge=1000, description="the most run ids a stage remembers within that window "
                                        "(about 130 bytes each, at most twice this many)")
    state_checkpoints: bool = Field(
        True, description="at a clean stop, write barrier and window state to state_dir, so "
                          "the next start reads only the changelog written since (off: "
                          "restores read the whole changelog)")
    ledger_retention_s: float = Field(
        7 * 86_400.0, gt=0, description="how long the run ledger keeps runs that need nothing "
                                        "more (succeeded, skipped, released); failed, held and "
                                        "parked runs stay until resolved")
    replication_factor: int | None = Field(
        None, ge=1, le=32,
        description="replicas of every Kafka topic StreamFlow creates (unset: the broker's "
                    "default.replication.factor); capped, with a warning, by the brokers alive "
                    "at creation; the embedded transport ignores it")
    min_insync_replicas: int | None = Field(
        None, ge=1, le=32,
        description="min.insync.replicas of every Kafka topic StreamFlow creates: replicas "
                    "that must hold a write before acks=all succeeds (unset: the broker's)")
    catalog_url: SecretStr | None = Field(
        None, description="where the catalog lives: postgresql://user:password@host/db for a "
                          "fleet (needs the postgres extra), or sqlite:PATH; unset: SQLite "
                          "in <state_dir>/<namespace>/catalog.db")
    catalog_retention_s: float | None = Field(
        None, gt=0, description="how long the catalog keeps runs and dead letters after they "
                                "ended (unset: for ever; the catalog is the history, kept "
                                "past the ledger's own retention)")
    lineage: str | None = Field(
        None, description="where OpenLineage run events go: file:PATH, http(s)://URL, console, "
                          "or 'openlineage' for the client's own OPENLINEAGE_* configuration "
                          "(unset: none)")

    @model_validator(mode="before")
    @classmethod
    def _nest_kafka_security(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not KAFKA_SECURITY_KEYS.keys() & data.keys():
            return data
        data = dict(data)
        nested = data.get("kafka_security")
        nested = dict(nested) if isinstance(nested, dict) else {}
        for key, name in KAFKA_SECURITY_KEYS.items():
            if key in data:
                nested[name] = data.pop(key)
        data["kafka_security"] = nested
        return data

    @field_validator("http_port", mode="before")
    @classmethod
    def _port_off(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in ("off", "none", "") else v

    @model_validator(mode="after")
    def _default_dead_letter_topic(self) -> Settings:
        if not self.dead_letter_topic:
            object.__setattr__(self, "dead_letter_topic", dead_letter_topic(self.namespace))
        return self

    @model_validator(mode="after")
    def _retention_covers_dedupe(self) -> Settings:
        if self.ledger_retention_s < self.dedupe_window_s:
            raise ValueError(
                f"ledger_retention_s ({self.ledger_retention_s:g}) is shorter than "
                f"dedupe_window_s ({self.dedupe_window_s:g}): a restarted worker rebuilds its "
                "dedupe window from the ledger, so keep the ledger at least that long")
        return self

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Settings:
        factor, insync = self.replication_factor, self.min_insync_replicas
        if factor is not None and insync is not None and insync > factor:
            raise ValueError(
                f"min_insync_replicas ({insync}) is above replication_factor ({factor}): no "
                "write could ever be acknowledged by enough replicas")
        return self

    @property
    def transport(self) -> Literal["kafka", "embedded"]:
        return "kafka" if self.kafka_bootstrap else "embedded"

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        path_s = os.environ.get(ENV_PREFIX + "CONFIG")
        path = Path(path_s) if path_s else next(
            (Path(p) for p in CONFIG_FILES if Path(p).is_file()), None
        )
        if path is not None:
            try:
                values.update(tomllib.loads(path.read_text()).get("streamflow", {}))
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise ConfigError(f"cannot read config file {path}: {e}") from e
        for name in [*cls.model_fields, *KAFKA_SECURITY_KEYS]:
            env = os.environ.get(ENV_PREFIX + name.upper())
            if env is not None and env != "" and name != "kafka_security":
                values[name] = env
                # A secret from the environment replaces the file's, however either is given.
                twin = name.removesuffix("_file") if name.endswith("_file") else name + "_file"
                if twin in KAFKA_SECURITY_KEYS and os.environ.get(ENV_PREFIX + twin.upper()) \
                        in (None, ""):
                    values.pop(twin, None)
        url_file = os.environ.get(ENV_PREFIX + "CATALOG_URL_FILE")
        if url_file and not os.environ.get(ENV_PREFIX + "CATALOG_URL"):
            try:  # a password in the URL stays out of the environment (a mounted secret)
                values["catalog_url"] = Path(url_file).read_text().strip()
            except OSError as e:
                raise ConfigError(f"cannot read STREAMFLOW_CATALOG_URL_FILE {url_file}: "
                                  f"{e.strerror}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            where = f" (file {path})" if path else ""
            raise ConfigError(f"invalid StreamFlow settings{where}: {e}") from e
