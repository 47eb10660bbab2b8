"""The chain's compressions: one `Codec` per encoding, with bounded decompression.

A compressed payload is a complete zstd frame (with its content size) or a gzip member
(RFC 1952, mtime 0): any zstd or gzip library decodes it. Decoding is bounded, so a payload
that inflates past `max_bytes` is refused instead of filling memory.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Protocol

import zstandard

from services.chain.policy import GZIP, IDENTITY, ZSTD

# The 4 KiB payload limit, as JSON, with room to spare: more than this is not a notification.
MAX_DECODED_BYTES = 256 * 1024


class DecodeFailed(ValueError):
    """Bytes that are not a payload of the named encoding (or inflate past the bound)."""


class Codec(Protocol):
    name: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes, max_bytes: int = MAX_DECODED_BYTES) -> bytes: ...


class Identity:
    name = IDENTITY

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes, max_bytes: int = MAX_DECODED_BYTES) -> bytes:
        if len(data) > max_bytes:
            raise DecodeFailed("the payload is larger than a notification can be")
        return data


class Gzip:
    name = GZIP

    def __init__(self, level: int = 6) -> None:
        self._level = level

    def compress(self, data: bytes) -> bytes:
        # mtime 0: the same bytes in give the same bytes out, on every node.
        return gzip.compress(data, compresslevel=self._level, mtime=0)

    def decompress(self, data: bytes, max_bytes: int = MAX_DECODED_BYTES) -> bytes:
        inflater = zlib.decompressobj(wbits=31)  # a gzip member
        try:
            out = inflater.decompress(data, max_bytes + 1)
        except zlib.error:
            raise DecodeFailed("the payload is not valid gzip") from None
        if len(out) > max_bytes:
            raise DecodeFailed("the payload inflates past the bound")
        if not inflater.eof or inflater.unused_data:
            raise DecodeFailed("the payload is not one complete gzip member")
        return out


class Zstd:
    name = ZSTD

    def __init__(self, level: int = 3) -> None:
        # One compressor per codec: the event loop's thread is its only user.
        self._compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
        self._decompressor = zstandard.ZstdDecompressor()

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data)

    def decompress(self, data: bytes, max_bytes: int = MAX_DECODED_BYTES) -> bytes:
        try:
            params = zstandard.get_frame_parameters(data)
        except zstandard.ZstdError:
            raise DecodeFailed("the payload is not a zstd frame") from None
        known = params.content_size not in (
            zstandard.CONTENTSIZE_UNKNOWN,
            zstandard.CONTENTSIZE_ERROR,
        )
        if known and params.content_size > max_bytes:
            raise DecodeFailed("the payload inflates past the bound")
        try:
            out = self._decompressor.decompress(data, max_output_size=max_bytes)
        except zstandard.ZstdError:
            raise DecodeFailed("the payload is not valid zstd") from None
        if len(out) > max_bytes:
            raise DecodeFailed("the payload inflates past the bound")
        return out


def codecs() -> dict[str, Codec]:
    """A fresh codec of each encoding, by name."""
    return {IDENTITY: Identity(), GZIP: Gzip(), ZSTD: Zstd()}
