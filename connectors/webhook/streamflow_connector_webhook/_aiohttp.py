"""aiohttp, the optional ``webhook`` extra, imported when a webhook source or sink is set up."""

from __future__ import annotations

from typing import Any

from streamflow.connectors import ConnectorError


def aiohttp_module() -> Any:
    """The aiohttp package (with aiohttp.web), or a ConnectorError naming the extra."""
    try:  # deferred: aiohttp is the optional `webhook` extra
        import aiohttp
        import aiohttp.web  # deferred too: the server half of the same extra
    except ImportError as e:
        raise ConnectorError(
            "the webhook connector needs aiohttp: pip install 'streamflow[webhook]'") from e
    return aiohttp
