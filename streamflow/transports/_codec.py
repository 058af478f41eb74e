"""How the embedded log stores headers: one JSON array per row (bytes as latin-1 text, which
maps every byte to one code point and back)."""

from __future__ import annotations

import orjson


def enc_headers(h: list[tuple[str, bytes]]) -> bytes:
    return orjson.dumps([[k, v.decode("latin-1")] for k, v in h])


def dec_headers(b: bytes) -> list[tuple[str, bytes]]:
    return [(k, v.encode("latin-1")) for k, v in orjson.loads(b)]
