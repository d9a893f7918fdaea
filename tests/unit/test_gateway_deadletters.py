from __future__ import annotations

import base64
import json

from gateway.deadletters import dead_letter_from, dead_letter_json
from gateway.decode import DecodeResult

# 2024-05-01T12:00:00Z
RECEIVED_NS = (1_714_521_600 + 12 * 3600) * 1_000_000_000


def letter_json(payload: bytes, payload_max: int) -> dict[str, object]:
    result = DecodeResult(
        topic="karkhana/v1/edge/a/samples",
        payload=payload,
        received_ns=RECEIVED_NS,
        reason="payload is not JSON: x",
    )
    letter = dead_letter_from(result, payload_max)
    assert letter.payload_size == len(payload)
    assert letter.payload == payload[:payload_max]
    decoded = json.loads(dead_letter_json(letter))
    assert isinstance(decoded, dict)
    return decoded


def test_text_payload() -> None:
    out = letter_json(b"hello", 4096)
    assert out == {
        "topic": "karkhana/v1/edge/a/samples",
        "reason": "payload is not JSON: x",
        "received": "2024-05-01T12:00:00Z",
        "payload": "hello",
        "payload_encoding": "utf-8",
        "payload_size": 5,
        "truncated": False,
    }


def test_truncated_text_drops_a_partial_character() -> None:
    # "é" is two bytes (c3 a9); truncating after 4 bytes cuts it in half.
    out = letter_json("abcé".encode(), 4)
    assert (out["payload"], out["payload_encoding"], out["truncated"]) == ("abc", "utf-8", True)
    assert out["payload_size"] == 5


def test_binary_payload_is_base64() -> None:
    out = letter_json(b"\xff\x00\x01abc", 4)
    assert out["payload_encoding"] == "base64"
    assert base64.b64decode(str(out["payload"])) == b"\xff\x00\x01a"
    assert out["truncated"] is True
