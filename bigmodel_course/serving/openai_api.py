"""OpenAI-compatible routes for the served language model: POST /v1/chat/completions and POST /v1/completions.

Request and response bodies follow OpenAI's API reference (the fields this small model can honour): `model`,
`messages` or `prompt`, `max_tokens` (or `max_completion_tokens`), `temperature`, `top_p`, `stop`, `seed`,
`stream`, `n` (1 only); responses carry `id`, `object`, `created`, `model`, `choices` and `usage`. With
`stream: true` the reply arrives as Server-Sent Events, one `data:` chunk per token, ending with `data: [DONE]`.
Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so official clients raise their
usual exceptions. Optional API keys (`Authorization: Bearer …`) each get a token bucket of requests per minute;
an empty bucket answers 429 with `Retry-After`.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from .engine import SamplingParams
from .llm import LLMService

CHAT_ROUTE, COMPLETIONS_ROUTE = "/v1/chat/completions", "/v1/completions"
MAX_MESSAGES = 64
MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_CONTENT_CHARS = 4096


def openai_error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None) -> JSONResponse:
    """An error response in OpenAI's shape."""
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


_StopString = Annotated[StrictStr, Field(min_length=1)]


class _Request(BaseModel):
    """Common fields; unknown fields are refused (a client expecting an option we ignore should know)."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    stop: StrictStr | Annotated[list[_StopString], Field(max_length=MAX_STOP)] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    n: Annotated[StrictInt, Field(ge=1, le=1)] = 1
    user: StrictStr | None = None


class Message(BaseModel):
    """One chat message (text content)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[StrictStr, Field(max_length=MAX_CONTENT_CHARS)]
    name: StrictStr | None = None


class ChatRequest(_Request):
    """POST /v1/chat/completions."""

    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: Annotated[StrictStr, Field(min_length=1, max_length=MAX_CONTENT_CHARS)]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = 16  # OpenAI's default for completions


class RateLimiter:
    """A token bucket per API key: `per_minute` requests a minute, bursts of up to `per_minute`."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, got {per_minute}")
        self.rate, self.capacity, self.clock = per_minute / 60.0, float(per_minute), clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """Take one request from the key's bucket: 0.0 if allowed, else the seconds until one is available."""
        with self._lock:
            now = self.clock()
            level, last = self._buckets.get(key, (self.capacity, now))
            level = min(self.capacity, level + (now - last) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate


def _validation_error(e: ValidationError) -> JSONResponse:
    err = e.errors(include_url=False, include_input=False)[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    return openai_error(400, f"{param}: {err['msg']}" if param else err["msg"], param=param)


def openai_router(service: LLMService, api_keys: dict[str, int] | None = None) -> APIRouter:
    """The two routes over `service`. api_keys: key → requests per minute (None: no keys required)."""
    router = APIRouter()
    limiters = {key: RateLimiter(rate) for key, rate in (api_keys or {}).items()}

    def authorise(request: Request) -> JSONResponse | None:
        if not limiters:
            return None
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if key not in limiters:
            return openai_error(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                                code="invalid_api_key")
        wait = limiters[key].acquire(key)
        if wait > 0:
            return openai_error(429, f"Rate limit reached for this API key; retry in {wait:.1f} s.",
                                type_="rate_limit_error", code="rate_limit_exceeded",
                                headers={"Retry-After": str(math.ceil(wait))})
        return None

    async def parse(request: Request, schema: type[_Request]) -> _Request | JSONResponse:
        try:
            data = json.loads(await request.body())
        except (ValueError, RecursionError) as e:
            return openai_error(400, f"The request body is not valid JSON ({str(e)[:80]}).")
        try:
            body = schema.model_validate(data)
        except ValidationError as e:
            return _validation_error(e)
        if body.model != service.name:
            return openai_error(404, f"The model '{body.model[:64]}' does not exist; this server serves "
                                     f"'{service.name}'.", param="model", code="model_not_found")
        return body

    def sampling(body: _Request, prompt: list[int], max_tokens: int | None, stop_ids: tuple[int, ...]):
        room = service.context - len(prompt)
        if room < 1:
            return openai_error(400, f"The prompt takes {len(prompt)} tokens; this model's context holds "
                                     f"{service.context}.", param="messages", code="context_length_exceeded")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return SamplingParams(max_tokens=min(max_tokens or room, room), temperature=body.temperature,
                              top_p=body.top_p, stop_ids=stop_ids, stop_sequences=service.stop_sequences(stops),
                              seed=body.seed)

    async def answer(body: _Request, prompt: list[int], params: SamplingParams, chat: bool):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": rid, "object": kind, "created": created, "model": service.name}
        events = service.stream(prompt, params)
        if not body.stream:
            tokens, reason = [], None
            try:
                async for event in events:
                    tokens += event.tokens
                    reason = event.finish_reason
            except RuntimeError as e:  # the engine failed this request
                return openai_error(500, str(e), type_="server_error")
            finally:
                await events.aclose()  # a client that went away cancels its request
            text = service.decode(tokens)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                      if chat else {"index": 0, "text": text, "finish_reason": reason, "logprobs": None})
            usage = {"prompt_tokens": len(prompt), "completion_tokens": len(tokens) + int(reason == "stop"),
                     "total_tokens": len(prompt) + len(tokens) + int(reason == "stop")}
            return {**head, "choices": [choice], "usage": usage}

        chunk_head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        def sse(choice: dict) -> str:
            return f"data: {json.dumps({**chunk_head, 'choices': [choice]}, ensure_ascii=False)}\n\n"

        def piece(text: str, reason: str | None, first: bool = False) -> dict:
            if chat:
                delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
                return {"index": 0, "delta": delta, "finish_reason": reason}
            return {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}

        async def chunks() -> AsyncIterator[str]:
            if chat:
                yield sse(piece("", None, first=True))
            try:
                async for event in events:
                    text = service.decode(event.tokens)
                    if text:
                        yield sse(piece(text, None))
                    if event.finish_reason is not None:
                        yield sse(piece("", event.finish_reason))
            except RuntimeError as e:  # the engine failed this request: say so in the stream, as OpenAI does
                error = {"message": str(e), "type": "server_error", "param": None, "code": None}
                yield f"data: {json.dumps({'error': error})}\n\n"
            else:
                yield "data: [DONE]\n\n"
            finally:
                await events.aclose()  # a client that went away cancels its request and frees the slot

        return StreamingResponse(chunks(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.post(CHAT_ROUTE)
    async def chat_completions(request: Request):
        """OpenAI's chat completions: the assistant's next turn for a conversation."""
        if (refused := authorise(request)) is not None:
            return refused
        body = await parse(request, ChatRequest)
        if isinstance(body, JSONResponse):
            return body
        try:
            prompt = service.chat_prompt([m.model_dump(exclude_none=True, exclude={"name"}) for m in body.messages])
        except ValueError as e:
            return openai_error(400, str(e), param="messages")
        params = sampling(body, prompt, body.max_completion_tokens or body.max_tokens, (service.end_id,))
        if isinstance(params, JSONResponse):
            return params
        return await answer(body, prompt, params, chat=True)

    @router.post(COMPLETIONS_ROUTE)
    async def completions(request: Request):
        """OpenAI's (legacy) text completions: the continuation of a prompt."""
        if (refused := authorise(request)) is not None:
            return refused
        body = await parse(request, CompletionRequest)
        if isinstance(body, JSONResponse):
            return body
        prompt = service.text_prompt(body.prompt)
        params = sampling(body, prompt, body.max_tokens, (service.tokenizer.sep_id,))
        if isinstance(params, JSONResponse):
            return params
        return await answer(body, prompt, params, chat=False)

    return router
