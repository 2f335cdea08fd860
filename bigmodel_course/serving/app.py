"""The FastAPI model service: text and image classification with the registry's promoted models, model list,
health and Prometheus metrics.

Models are loaded lazily on first use and cached. Every request reads the model's small promoted
pointer file (and canary file), so after `promote` or `rollback` the next request loads the newly promoted
version; no restart is needed. A version that does not load never replaces the one being served.
Options: micro-batching of concurrent text requests (batching.py), admin routes behind an API key from
the environment (admin.py), canary releases (canary.py).

No request can stall the others: bodies are read whole (with a size limit and a timeout) by the middleware,
parsed and validated in bounded time (schemas.py; large bodies in the thread pool), and models load under a
lock of their own, so a large model being verified never holds up requests for a model already loaded.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admin import UPLOAD_ROUTE, AdminGate, admin_key_from_env, admin_router, check_admin_key
from .batching import MicroBatcher, length_buckets
from .canary import damaged_canaries, get_canary
from .checks import InvalidNameError
from .llm import LLMService
from .loaded import LoadedModel
from .metrics import ServiceMetrics
from .middleware import BodyLimitMiddleware, CatchAllMiddleware, MetricsMiddleware, logger
from ..rag.answer import REFUSE_BELOW, BookIndex
from .openai_api import CHAT_ROUTE, COMPLETIONS_ROUTE, openai_router
from .preprocess import InputError, check_images, check_texts, decode_png
from .rag_api import RAG_ROUTE, rag_router
from .registry import ModelNotFoundError, ModelRegistry, RegistryError, check_name
from .schemas import (
    ClassifyResponse,
    ErrorResponse,
    Health,
    ModelsResponse,
    request_models,
    validation_message,
)

ROUTES = ("/v1/text/classify", "/v1/image/classify", "/v1/models", "/healthz", "/metrics")
ADMIN_ROUTES = tuple(f"/v1/admin/models/{{name}}/{action}" for action in ("versions", "promote", "rollback", "canary"))
# the error codes each route can answer, as its OpenAPI document lists them: 413/415 only where a body is read
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 500, 503)}
_NO_BODY_ERRORS = {code: {"model": ErrorResponse} for code in (500, 503)}
_UPLOADS = {"schema": {
    "type": "object", "required": ["model", "files"],
    "properties": {"model": {"type": "string"},
                   "files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
}}


def _json_body(model: type[BaseModel], **more: dict) -> dict:
    """openapi_extra documenting a route's JSON body (the route parses the body itself, in bounded time)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}, **more}}}


INLINE_PARSE_BYTES = 65_536  # bodies up to this size are parsed on the event loop (well under a millisecond)


async def parse_request(model: type[BaseModel], raw: bytes):
    """`parse_body` on the event loop for small bodies, in the thread pool for large ones (milliseconds of work)."""
    if len(raw) <= INLINE_PARSE_BYTES:
        return parse_body(model, raw)
    return await run_in_threadpool(parse_body, model, raw)


def parse_body(model: type[BaseModel], raw: bytes):
    """The request body validated by `model`; HTTPException 400 (malformed JSON) or 422 naming the first problem."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise HTTPException(400, f"malformed JSON: {e.msg} at position {e.pos}") from None
    except (ValueError, RecursionError) as e:  # undecodable bytes, a 5,000-digit number, nesting too deep
        raise HTTPException(400, f"malformed JSON: {str(e)[:100] or type(e).__name__}") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        status, message = validation_message(e.errors(include_url=False, include_input=False))
        raise HTTPException(status, message) from None


def _media_type(request: Request) -> str:
    """The request's media type in lower case ('' when it names none): 'application/json', 'multipart/form-data'."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    """application/json or a +json type."""
    return media_type == "application/json" or media_type.endswith("+json")


def _a(task: str) -> str:
    """'a text' / 'an image'."""
    return f"an {task}" if task[:1] in "aeiou" else f"a {task}"


class ModelCache:
    """Loaded models by (name, version): the promoted version of each model, and its canary when one runs.

    A version that fails to load (corrupt or tampered files) is remembered as failed and not retried on
    every request; while it is promoted, the service keeps answering with the last version of that model
    that did load (the answer names its version) and logs the failure. A damaged canary file is logged once
    and ignored: its model keeps answering with the promoted version. Each version loads under its own
    lock, so verifying a large model never holds up requests for the models already loaded.
    """

    def __init__(self, registry: ModelRegistry, metrics: ServiceMetrics, seed: int | None = None) -> None:
        self.registry, self.metrics = registry, metrics
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._last_good: dict[str, LoadedModel] = {}
        self._failed: set[tuple[str, str]] = set()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts above; never held while a model loads
        self._reported: set[tuple[str, str]] = set()
        self._random = random.Random(seed)

    def loaded(self) -> list[str]:
        """'name:version' of every cached model."""
        with self._lock:
            return sorted(f"{name}:{version}" for name, version in self._models)

    def report_once(self, what: str, problem: str) -> None:
        """Log a damaged registry entry the first time it is seen (requests would otherwise repeat it)."""
        with self._lock:
            if (what, problem) in self._reported:
                return
            self._reported.add((what, problem))
        logger.error("%s: %s", what, problem)

    def _load(self, name: str, version: str) -> LoadedModel:
        """The cached or freshly loaded version; RegistryError when it does not load (counted unless it does
        not exist, so the metric's labels are versions the registry really has)."""
        key = (name, version)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                return model
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per version at a time; other versions and models go on
            with self._lock:
                model = self._models.get(key)
            if model is not None:
                return model
            try:
                model = self.registry.load(name, version)
            except RegistryError as e:
                with self._lock:
                    self._loading.pop(key, None)
                    if not isinstance(e, (ModelNotFoundError, InvalidNameError)):
                        self._failed.add(key)
                if not isinstance(e, (ModelNotFoundError, InvalidNameError)):
                    self.metrics.load_failures.labels(name, version).inc()
                raise
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self._models[key] = model
                self._loading.pop(key, None)
            self.metrics.load_seconds.labels(name, version).set(model.load_seconds)
            return model

    def preload(self, name: str, version: str) -> LoadedModel:
        """Load (and verify) a version before it takes traffic; RegistryError naming the problem if it does not load."""
        with self._lock:
            self._failed.discard((name, version))
        return self._load(name, version)

    def _canary(self, name: str, promoted: str) -> str | None:
        """The canary version that answers this request, or None (also when the canary file is damaged)."""
        try:
            canary = get_canary(self.registry, name)
        except RegistryError as e:
            self.report_once(f"model {name!r} canary ignored", str(e))
            return None
        if canary is not None and canary.version != promoted and self._random.random() < canary.fraction:
            return canary.version
        return None

    def get(self, name: str, task: str) -> LoadedModel:
        """The version of `name` that answers this request; HTTPException 404/400/422/503 naming the problem."""
        try:
            check_name(name)
        except RegistryError as e:
            raise HTTPException(422, str(e)) from None
        try:
            promoted = self.registry.promoted_version(name)
        except ModelNotFoundError as e:
            raise HTTPException(404, str(e)) from None
        except RegistryError as e:
            self.report_once(f"cannot read the registry entry of model {name!r}", str(e))  # paths stay in the log
            raise HTTPException(503, f"model {name!r} cannot be loaded; the details are in the server log") from None
        canary = self._canary(name, promoted)
        model = None
        for version in ([canary] if canary else []) + [promoted]:
            with self._lock:
                if (name, version) in self._failed:
                    continue
            try:
                model = self._load(name, version)
                break
            except RegistryError as e:
                logger.error("model %r version %s does not load: %s", name, version, e)
        with self._lock:
            if model is not None and model.card.version == promoted:
                self._last_good[name] = model
                for key in [k for k in self._models if k[0] == name and k[1] not in (promoted, canary)]:
                    del self._models[key]  # versions no longer promoted or in a canary
            elif model is None:
                model = self._last_good.get(name)
        if model is None:
            raise HTTPException(503, f"model {name!r} cannot be loaded; the details are in the server log")
        if model.card.task != task:
            raise HTTPException(400, f"model {name!r} is {_a(model.card.task)} model, not {_a(task)} model; "
                                     f"use POST /v1/{model.card.task}/classify")
        return model


def _check_limits(max_batch: int, max_text_chars: int, max_body_bytes: int) -> None:
    """Each limit must be a positive int."""
    for key, value in (("max_batch", max_batch), ("max_text_chars", max_text_chars),
                       ("max_body_bytes", max_body_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key} must be a positive int, got {value!r}")


def create_app(
    registry: ModelRegistry | str | os.PathLike | None = None,
    *,
    max_batch: int = 64,
    max_text_chars: int = 512,
    max_body_bytes: int = 1_000_000,
    micro_batch: int = 0,
    micro_batch_wait_ms: float = 5.0,
    micro_batch_workers: int = 1,
    micro_batch_tokens: int = 1024,
    admin_key: str | None = None,
    admin_max_body_bytes: int = 64_000_000,
    canary_seed: int | None = None,
    body_timeout: float = 30.0,
    llm: LLMService | None = None,
    llm_api_keys: dict[str, int] | None = None,
    rag_index: BookIndex | None = None,
    rag_refuse_below: float = REFUSE_BELOW,
) -> FastAPI:
    """The service over `registry` (a ModelRegistry, a registry folder, or None for the default registry).

    micro_batch > 0 gathers concurrent text requests for up to `micro_batch_wait_ms` or `micro_batch` texts;
    `micro_batch_workers` batches run at a time, each cut into forward passes of similar text lengths of at most
    `micro_batch_tokens` padded characters (0: one forward pass per batch, padded to its longest text). admin_key
    (None: read BIGMODEL_ADMIN_KEY; unset: admin routes disabled) protects the /v1/admin routes, whose bodies
    (model uploads) may be up to admin_max_body_bytes. A request body that has not arrived completely within
    body_timeout seconds is refused with 408. llm: a language model to serve through the OpenAI-compatible routes
    (openai_api.py), its engine thread running while the app runs; llm_api_keys: API key → requests per minute
    (None: the routes need no key). rag_index: the book's index, served by POST /v1/rag/ask (rag_api.py),
    answering when the best passage scores at least rag_refuse_below.
    """
    from .. import __version__

    _check_limits(max_batch, max_text_chars, max_body_bytes)
    if isinstance(admin_max_body_bytes, bool) or not isinstance(admin_max_body_bytes, int) or admin_max_body_bytes <= 0:
        raise ValueError(f"admin_max_body_bytes must be a positive int, got {admin_max_body_bytes!r}")
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 0:
        raise ValueError(f"micro_batch must be an int ≥ 0 (0: off), got {micro_batch!r}")
    if isinstance(micro_batch_tokens, bool) or not isinstance(micro_batch_tokens, int) or micro_batch_tokens < 0:
        raise ValueError(f"micro_batch_tokens must be an int ≥ 0 (0: no length buckets), got {micro_batch_tokens!r}")
    if isinstance(body_timeout, bool) or not isinstance(body_timeout, (int, float)) or not 0 < body_timeout < 1e6:
        raise ValueError(f"body_timeout must be a positive number of seconds, got {body_timeout!r}")
    text_request, image_request = request_models(max_batch)
    if admin_key is None:
        admin_key = admin_key_from_env()
    check_admin_key(admin_key)
    if not isinstance(registry, ModelRegistry):
        registry = ModelRegistry(registry)
    metrics = ServiceMetrics()
    cache = ModelCache(registry, metrics, seed=canary_seed)
    batcher = None
    if micro_batch:
        def count_batch(model: LoadedModel, requests: int, items: int) -> None:
            metrics.batch_requests.observe(requests)

        split = partial(length_buckets, max_tokens=micro_batch_tokens) if micro_batch_tokens else None
        batcher = MicroBatcher(micro_batch, micro_batch_wait_ms / 1000, on_batch=count_batch,
                               workers=micro_batch_workers, split=split)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if llm is not None:
            llm.start()
        yield
        if batcher is not None:
            await batcher.aclose()
        if llm is not None:
            llm.close()

    app = FastAPI(title="bigmodel-course model service", version=__version__, lifespan=lifespan,
                  description="Text and digit classification with the promoted models of a model registry.")
    app.state.registry, app.state.metrics, app.state.models = registry, metrics, cache
    app.state.limits = {"max_batch": max_batch, "max_text_chars": max_text_chars, "max_body_bytes": max_body_bytes,
                        "micro_batch": micro_batch, "admin_max_body_bytes": admin_max_body_bytes,
                        "body_timeout": body_timeout}
    app.state.admin_enabled = admin_key is not None

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = validation_message(exc.errors())
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    def answer(model: LoadedModel, predictions: list[dict], seconds: float) -> dict:
        """Count the items and time of one answer by model and version; the response body."""
        card = model.card
        metrics.items.labels(card.name, card.version).inc(len(predictions))
        metrics.model_latency.labels(card.name, card.version).observe(seconds)
        return {"model": card.name, "version": card.version, "predictions": predictions}

    def classify(model: LoadedModel, inputs) -> dict:
        """Predict and count the items (runs in the thread pool)."""
        start = time.perf_counter()
        try:
            predictions = model.predict(inputs)
        except InputError as e:
            raise HTTPException(422, str(e)) from None
        return answer(model, predictions, time.perf_counter() - start)

    @app.post("/v1/text/classify", response_model=ClassifyResponse, responses=_ERRORS,
              openapi_extra=_json_body(text_request))
    async def classify_text(request: Request) -> dict:
        """Classify a batch of texts with the promoted version of a text model."""
        content_type = _media_type(request)
        if content_type and not _is_json(content_type):
            raise HTTPException(415, f"unsupported Content-Type {content_type[:60]!r}; send application/json")
        body = await parse_request(text_request, await request.body())
        try:
            texts = check_texts(body.texts, max_items=max_batch, max_chars=max_text_chars)
        except InputError as e:
            raise HTTPException(422, str(e)) from None
        if batcher is None:
            def run() -> dict:
                return classify(cache.get(body.model, "text"), texts)

            return await run_in_threadpool(run)
        model = await run_in_threadpool(cache.get, body.model, "text")
        start = time.perf_counter()
        try:
            predictions = await batcher.submit(model, texts)
        except InputError as e:
            raise HTTPException(422, str(e)) from None
        return answer(model, predictions, time.perf_counter() - start)

    async def _image_form(request: Request) -> tuple[str, list[tuple[str, bytes]]]:
        """Model name and (name, bytes) of every uploaded file of a multipart image request."""
        try:
            form = await request.form(max_files=max_batch + 1, max_fields=16)
        except Exception as e:  # python-multipart and starlette raise several types for broken bodies
            detail = getattr(e, "detail", None) or getattr(e, "message", None) or type(e).__name__
            raise HTTPException(400, f"malformed multipart body: {detail}") from None
        try:
            name = form.get("model")
            if not isinstance(name, str) or not name:
                raise HTTPException(422, "missing form field 'model'")
            uploads = form.getlist("files")
            if not uploads:
                raise HTTPException(422, "missing form field 'files' (one or more PNG uploads)")
            if len(uploads) > max_batch:
                raise HTTPException(422, f"too many files: {len(uploads)}; at most {max_batch} per request")
            files = []
            for i, upload in enumerate(uploads):
                if not isinstance(upload, UploadFile):
                    raise HTTPException(422, f"files[{i}] must be a file upload, not a text field")
                label = f"files[{i}] ({(upload.filename or 'unnamed')[:64]})"
                files.append((label, await upload.read()))
            return name, files
        finally:
            await form.close()

    @app.post("/v1/image/classify", response_model=ClassifyResponse, responses=_ERRORS,
              openapi_extra=_json_body(image_request, **{"multipart/form-data": _UPLOADS}))
    async def classify_image(request: Request) -> dict:
        """Classify 8×8 digit images (JSON arrays, or PNG uploads in the multipart field `files`)."""
        content_type = _media_type(request)
        if content_type == "multipart/form-data":
            name, files = await _image_form(request)

            def run() -> dict:
                model = cache.get(name, "image")
                prep = model.card.preprocessing
                try:
                    images = [decode_png(data, int(prep["image_size"]), float(prep["max_value"]), label)
                              for label, data in files]
                except InputError as e:
                    raise HTTPException(422, str(e)) from None
                return classify(model, images)
        elif _is_json(content_type):
            body = await parse_request(image_request, await request.body())

            def run() -> dict:
                model = cache.get(body.model, "image")
                prep = model.card.preprocessing
                try:
                    checked = check_images(body.images, int(prep["image_size"]), float(prep["max_value"]),
                                           max_batch)
                except InputError as e:
                    raise HTTPException(422, str(e)) from None
                return classify(model, checked)
        else:
            raise HTTPException(415, f"unsupported Content-Type {content_type[:60] or 'none'!r}; send "
                                     "application/json or multipart/form-data")
        return await run_in_threadpool(run)

    @app.get("/v1/models", response_model=ModelsResponse, responses=_NO_BODY_ERRORS)
    def list_models() -> dict:
        """Every readable version of every registered model (name, version, sha256 of the weights, metrics, created,
        promoted), and the damaged entries, each named with its problem and skipped."""
        try:
            cards, damaged = registry.scan()
            damaged += damaged_canaries(registry)
        except OSError as e:
            logger.error("cannot list the registry: %s", e)  # paths stay in the server log
            raise HTTPException(503, "the model registry cannot be read; the details are in the server log") from None
        for entry in damaged:
            cache.report_once(f"damaged registry entry {entry.name} {entry.version or ''}".rstrip(), entry.problem)
        return {"models": [card.summary() for card in cards],
                "damaged": [{"name": d.name, "version": d.version, "problem": d.problem} for d in damaged]}

    @app.get("/healthz", response_model=Health)
    def healthz() -> dict:
        """The service is up; lists the models loaded so far."""
        return {"status": "ok", "loaded": cache.loaded()}

    @app.get("/metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus text format: requests, latency, items classified, model load time."""
        body = metrics.render() + (generate_latest(llm.metrics.registry) if llm is not None else b"")
        return Response(body, media_type=metrics.content_type)

    app.include_router(admin_router(registry, cache, max_upload_bytes=admin_max_body_bytes))
    if llm is not None:
        app.include_router(openai_router(llm, llm_api_keys))
    if rag_index is not None:
        app.include_router(rag_router(rag_index, rag_refuse_below))
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes, route_limits={UPLOAD_ROUTE: admin_max_body_bytes},
                       timeout=body_timeout)
    app.add_middleware(AdminGate, admin_key=admin_key)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics,
                       routes=ROUTES + ADMIN_ROUTES + ((CHAT_ROUTE, COMPLETIONS_ROUTE) if llm is not None else ())
                       + ((RAG_ROUTE,) if rag_index is not None else ()))
    return app
