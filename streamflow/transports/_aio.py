"""Closing aiokafka clients without their cancellations leaking into ours."""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_quietly(client: Any) -> None:
    """``client.stop()``, errors ignored: the caller is giving the client up anyway.

    After the broker went away, aiokafka's ``stop()`` can raise the CancelledError of a fetch
    task it cancelled itself. That is not a cancellation of the caller (a consumer rewinding
    to its last commit), so it is swallowed too; a real cancellation still propagates.
    """
    try:
        await client.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception:  # closing a broken client: nothing left to do
        pass
