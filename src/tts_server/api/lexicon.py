"""User lexicon routes (``/v1/lexicon``) and the frontend preview (``/v1/frontend/preview``).

The store (``inference.lexicon``) validates and persists; these routes translate its errors into the error table.
The preview runs in a worker, where the voice's frontend and phone set live (the API process never loads jieba,
pypinyin's tables or torch): it is a job of kind ``preview`` that goes through admission like any synthesis and
carries the lexicon version, so it shows exactly what the next synthesis would read.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import APIRouter, Depends, Request

from tts_server.api import errors
from tts_server.api.errors import GUARDED_ERRORS, SYNTHESIS_ERRORS, ApiError, openapi_errors
from tts_server.api.schemas import LexiconResponse, LexiconUpdate, PreviewRequest, PreviewResponse
from tts_server.api.security import authenticated
from tts_server.api.serving import check_text, voice_info
from tts_server.api.state import app_state, request_id
from tts_server.inference.lexicon import Lexicon, LexiconDisabled, LexiconError, LexiconFull

log = logging.getLogger("tts_server.api")

router = APIRouter(tags=["lexicon"], dependencies=[Depends(authenticated)])


def _response(lexicon: Lexicon) -> LexiconResponse:
    return LexiconResponse(version=lexicon.version, entries=dict(lexicon.entries))


def _api_error(exc: LexiconError) -> ApiError:
    if isinstance(exc, LexiconDisabled):
        return ApiError(errors.LEXICON_DISABLED, exc.message)
    if isinstance(exc, LexiconFull):
        return ApiError(errors.LEXICON_FULL, exc.message, param="entries")
    return ApiError(errors.LEXICON_INVALID, exc.message,
                    param=f"entries.{exc.word}" if exc.word is not None else "entries")


@router.get("/v1/lexicon", response_model=LexiconResponse, responses=GUARDED_ERRORS, summary="The user lexicon")
async def get_lexicon(request: Request) -> LexiconResponse:
    return _response(app_state(request).lexicon.current)


@router.put("/v1/lexicon", response_model=LexiconResponse, summary="Add or replace lexicon entries",
            responses={**openapi_errors(400, 409, 413, 422), **GUARDED_ERRORS})
async def put_lexicon(body: LexiconUpdate, request: Request) -> LexiconResponse:
    """Adds the entries (a listed word's reading is replaced), or with `replace` makes them the whole lexicon.
    The change is on disk before the answer, and every worker uses it from the next request on."""
    store = app_state(request).lexicon
    if store.path is None:
        raise _api_error(LexiconDisabled("the lexicon is off: the server has no lexicon.path"))
    try:
        # File write and fsync: off the event loop.
        lexicon = await asyncio.to_thread(store.put, body.entries, replace=body.replace)
    except LexiconError as exc:
        raise _api_error(exc) from None
    log.info("request %s: lexicon version %d (%d entries, %d sent%s)", request_id(request), lexicon.version,
             len(lexicon.entries), len(body.entries), ", replace" if body.replace else "")
    return _response(lexicon)


@router.delete("/v1/lexicon/{word}", response_model=LexiconResponse,
               responses={**openapi_errors(404, 409), **GUARDED_ERRORS}, summary="Remove one lexicon entry")
async def delete_lexicon_entry(word: str, request: Request) -> LexiconResponse:
    store = app_state(request).lexicon
    try:
        lexicon = await asyncio.to_thread(store.delete, word)
    except LexiconError as exc:
        raise _api_error(exc) from None
    if lexicon is None:
        raise ApiError(errors.NOT_FOUND, f"no lexicon entry {word!r}", param="word")
    log.info("request %s: lexicon version %d (removed %r)", request_id(request), lexicon.version, word)
    return _response(lexicon)


@router.post("/v1/frontend/preview", response_model=PreviewResponse, responses=SYNTHESIS_ERRORS,
             summary="What the frontend would read", tags=["synthesis"])
async def preview(body: PreviewRequest, request: Request) -> PreviewResponse:
    """The normalised text, words, syllables with tones and breaks that a synthesis request with this text
    would use, with the current user lexicon applied."""
    state = app_state(request)
    info = voice_info(state, body.voice)
    check_text(state, body.text, "text")
    lexicon = state.lexicon.current
    handle = state.pool.submit(text=body.text, input_format=body.input_format, voice=info.name,
                               emotion=info.default_emotion, speed=1.0, request_id=request_id(request),
                               kind="preview", lexicon_version=lexicon.version)
    try:
        outcome = await handle.result()
    except asyncio.CancelledError:
        state.pool.cancel(handle)
        raise
    return PreviewResponse(voice=info.name, input_format=body.input_format, lexicon_version=lexicon.version,
                           **json.loads(outcome.preview))
