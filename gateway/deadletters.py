"""Dead letters: a rejected message kept with its reason (stored and published)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import msgspec

from gateway.decode import DecodeResult
from karkhana.models import from_ns, iso_utc


@dataclass(frozen=True, slots=True)
class DeadLetter:
    received_ns: int
    topic: str
    reason: str
    payload: bytes
    """The raw payload, truncated to the configured maximum."""
    payload_size: int
    """Size of the original payload in bytes."""


def dead_letter_from(result: DecodeResult, payload_max: int) -> DeadLetter:
    reason = result.reason or "rejected"
    return DeadLetter(
        received_ns=result.received_ns,
        topic=result.topic,
        reason=reason,
        payload=bytes(result.payload[:payload_max]),
        payload_size=len(result.payload),
    )


class _Published(msgspec.Struct):
    topic: str
    reason: str
    received: str
    payload: str
    payload_encoding: str
    payload_size: int
    truncated: bool


_encode = msgspec.json.Encoder().encode


def payload_text(payload: bytes, truncated: bool) -> tuple[str, str]:
    """``(text, "utf-8")`` for UTF-8 payloads, else ``(base64, "base64")``.

    A truncated payload may end inside a multi-byte character; that partial character is
    dropped rather than turning the whole payload into base64.
    """
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(payload) - 3 and exc.reason == "unexpected end of data":
            return payload[: exc.start].decode("utf-8"), "utf-8"
    return base64.b64encode(payload).decode("ascii"), "base64"


def dead_letter_json(letter: DeadLetter) -> bytes:
    """The message published on ``karkhana/v1/deadletter``."""
    truncated = len(letter.payload) < letter.payload_size
    text, encoding = payload_text(letter.payload, truncated)
    return _encode(
        _Published(
            topic=letter.topic,
            reason=letter.reason,
            received=iso_utc(from_ns(letter.received_ns)),
            payload=text,
            payload_encoding=encoding,
            payload_size=letter.payload_size,
            truncated=truncated,
        )
    )
