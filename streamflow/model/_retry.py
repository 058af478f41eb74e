"""Retry policy of a stage: how often, how long to wait, and which failures deserve another go."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from streamflow.errors import PipelineError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` counts the first try: the default of 1 means no retry, as in Airflow and
    Dagster, because retrying a deterministic bug only delays its dead letter.

    Waits grow exponentially from ``backoff_s`` up to ``max_backoff_s``; ``jitter`` (0..1) takes a
    random share off each wait so that many failing runs do not retry in lockstep.
    ``timeout_s`` bounds one attempt (a synchronous stage then runs in a worker thread).
    """

    attempts: int = 1
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    jitter: float = 0.5
    timeout_s: float | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise PipelineError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise PipelineError("RetryPolicy needs 0 <= backoff_s <= max_backoff_s")
        if not 0 <= self.jitter <= 1:
            raise PipelineError(f"RetryPolicy.jitter must be within 0..1, got {self.jitter}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise PipelineError(f"RetryPolicy.timeout_s must be > 0, got {self.timeout_s}")

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """After attempt number ``attempt`` (1-based) failed with ``exc``: go again?"""
        return attempt < self.attempts and isinstance(exc, self.retry_on)

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before attempt ``attempt + 1``."""
        base = min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 1))
        return float(base * (1 - self.jitter * rand()))


NO_RETRY = RetryPolicy()
