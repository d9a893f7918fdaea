"""``GET /api/v1/deadletters``: rejected messages with their reasons, newest first, paged."""

from __future__ import annotations

import codecs
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from karkhana.models import from_ns, iso_utc
from services.api.deps import ReaderDep
from services.store import StoredDeadLetter

router = APIRouter(tags=["deadletters"])

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger cursor is a 422, not a crash


class DeadLetterOut(BaseModel):
    id: int = Field(description="increases with every dead letter stored; the paging cursor")
    received: str = Field(description="when the gateway received the message (ISO 8601, UTC)")
    topic: str
    reason: str
    payload: str = Field(
        description="the kept bytes as UTF-8 text; bytes that are not UTF-8 appear as \\xNN"
    )
    payload_escaped: bool = Field(description="true when some bytes were not UTF-8 (\\xNN)")
    truncated: bool = Field(description="true when the gateway kept only the first bytes")
    payload_size: int = Field(description="size of the original payload in bytes")


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    total: int = Field(description="dead letters in the store")
    next_before: int | None = Field(
        description="pass as 'before' for the next (older) page; null on the last page"
    )


def payload_text(payload: bytes, truncated: bool) -> tuple[str, bool]:
    """The payload as text and whether invalid UTF-8 had to be escaped.

    A truncated payload may end inside a multi-byte character; that partial character is
    left out instead of being shown as escapes.
    """
    final = not truncated  # when truncated, an incomplete last character is held back
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(payload, final=final), False
    except UnicodeDecodeError:
        lenient = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        return lenient.decode(payload, final=final), True


def _item(letter: StoredDeadLetter) -> DeadLetterOut:
    truncated = len(letter.payload) < letter.payload_size
    text, escaped = payload_text(letter.payload, truncated)
    return DeadLetterOut(
        id=letter.id,
        received=iso_utc(from_ns(letter.received_ns)),
        topic=letter.topic,
        reason=letter.reason,
        payload=text,
        payload_escaped=escaped,
        truncated=truncated,
        payload_size=letter.payload_size,
    )


@router.get("/deadletters", response_model=DeadLetterPage)
def dead_letters(
    reader: ReaderDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="most items in the page")
    ] = DEFAULT_LIMIT,
    before: Annotated[
        int | None,
        Query(
            ge=1, le=MAX_ID, description="only dead letters with a smaller id (from 'next_before')"
        ),
    ] = None,
) -> DeadLetterPage:
    """Messages the gateway rejected, newest first, ``limit`` per page."""
    letters = reader.dead_letters(limit + 1, before)  # one more: is there a next page?
    page = letters[:limit]
    return DeadLetterPage(
        items=[_item(letter) for letter in page],
        total=reader.dead_letter_count(),
        next_before=page[-1].id if len(letters) > limit else None,
    )
