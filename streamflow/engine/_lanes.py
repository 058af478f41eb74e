"""A stage's two kinds of input: live topics, and the backfill lane of replayed arrivals."""

from __future__ import annotations

import asyncio
import time

from streamflow.model import Message
from streamflow.transports import Subscription

from ._context import Ctx


class LanePolling:
    """Live input first: the backfill lane gets a slice of ``backfill_batch`` records only
    when the live poll came back short of a full batch, so a live record waits behind at
    most one slice however large the backfill (and a backfill runs as fast as live
    leaves room for)."""

    def __init__(self, ctx: Ctx, live_topics: frozenset[str],
                 lane_topics: frozenset[str]) -> None:
        self.ctx = ctx
        self.live_topics, self.lane_topics = live_topics, lane_topics
        self._lane_busy_at = -10.0  # when the lane last had records
        self._lane_more = False  # the last look at the lane found records
        self._live_at = 0.0  # when live input last had records

    async def poll(self, sub: Subscription) -> tuple[list[Message], bool]:
        batch = self.ctx.poll_batch
        now = time.monotonic()
        if now - self._lane_busy_at > 2.0:
            # No backfill lately: one poll of everything, as without a lane. The first lane
            # records switch to the split reads below until the lane has been dry for 2 s.
            msgs = await sub.poll(batch, timeout=0.2)
            if any(m.topic in self.lane_topics for m in msgs):
                self._lane_busy_at = now
            return msgs, len(msgs) >= batch
        if self._lane_more:
            # Live is only peeked at while the lane flows; the client's fetches and sends
            # still get their turn on the event loop between two slices.
            await asyncio.sleep(0)
            wait = 0.0
        else:  # the lane just ran dry: live is waited for briefly (the lane's next fetch may
            # be on its way)
            wait = 0.02 if now - self._lane_busy_at < 1.0 else 0.2
        live = await sub.poll(batch, timeout=wait, topics=self.live_topics)
        if len(live) >= batch:
            return live, True
        if live:
            self._live_at = now
        # Small slices while live records keep coming; with live quiet for a second, the
        # backfill takes whole batches.
        size = self.ctx.backfill_batch if live or now - self._live_at < 1.0 else batch
        lane = await sub.poll(size, timeout=0.0, topics=self.lane_topics, append=True)
        self._lane_more = bool(lane)
        if lane:
            self._lane_busy_at = time.monotonic()
        return live + lane, bool(lane)
