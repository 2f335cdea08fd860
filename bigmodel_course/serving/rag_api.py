"""`POST /v1/rag/ask`: the book's extractive answer with links (rag.answer), with the service's error conventions:
a body that is not JSON is a 400, a question that is missing, empty, too long or not text is a 422 naming the
problem, and every error body is ``{"detail": "..."}``."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..rag.answer import K_SECTIONS, REFUSE_BELOW, BookIndex, answer, check_question
from ..rag.bm25 import MAX_QUERY_CHARS

RAG_ROUTE = "/v1/rag/ask"
MAX_SENTENCES = 10


class AskRequest(BaseModel):
    """The request body."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(max_length=MAX_QUERY_CHARS)
    max_sentences: int = Field(3, ge=1, le=MAX_SENTENCES)


def rag_router(index: BookIndex, refuse_below: float = REFUSE_BELOW) -> APIRouter:
    """The route over a loaded book index."""
    router = APIRouter()

    @router.post(RAG_ROUTE)
    async def ask(request: Request) -> dict:
        """Quote the sentences of the book that answer `question`, each with its section and link."""
        try:
            data = json.loads(await request.body())
        except (ValueError, RecursionError) as e:
            raise HTTPException(400, f"the request body is not valid JSON ({str(e)[:80]})") from None
        try:
            body = AskRequest.model_validate(data)
            question = check_question(body.question)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise HTTPException(422, f"{where}: {first.get('msg', 'invalid')}") from None
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        result = await asyncio.to_thread(answer, question, index, K_SECTIONS, body.max_sentences,
                                         refuse_below=refuse_below)
        return result.to_dict()

    return router
