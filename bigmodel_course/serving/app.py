"""The FastAPI model service: text and image classification with the registry's promoted models, model list,
health and Prometheus metrics.

Models are loaded lazily on first use and cached. Every request reads the model's small promoted
pointer file, so after `promote` or `rollback` the next request loads the newly promoted version;
no restart is needed.
"""

from __future__ import annotations

import os
import threading

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .loaded import LoadedModel
from .metrics import ServiceMetrics
from .middleware import BodyLimitMiddleware, CatchAllMiddleware, MetricsMiddleware, logger
from .preprocess import InputError, check_images, check_texts, decode_png
from .registry import ModelNotFoundError, ModelRegistry, RegistryError, check_name
from .schemas import (
    ClassifyResponse,
    ErrorResponse,
    Health,
    ImageRequest,
    ModelsResponse,
    TextRequest,
    validation_message,
)

ROUTES = ("/v1/text/classify", "/v1/image/classify", "/v1/models", "/healthz", "/metrics")
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 500, 503)}
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ImageRequest.model_json_schema()},
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["model", "files"],
                "properties": {"model": {"type": "string"},
                               "files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }},
        },
    }
}


def _a(task: str) -> str:
    """'a text' / 'an image'."""
    return f"an {task}" if task[:1] in "aeiou" else f"a {task}"


class ModelCache:
    """Promoted models loaded on first use; a new promoted version (promote/rollback) replaces the cached one."""

    def __init__(self, registry: ModelRegistry, metrics: ServiceMetrics) -> None:
        self.registry, self.metrics = registry, metrics
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def loaded(self) -> list[str]:
        """'name:version' of every cached model."""
        return sorted(f"{name}:{m.card.version}" for name, m in self._models.items())

    def get(self, name: str, task: str) -> LoadedModel:
        """The promoted version of `name` for `task`; HTTPException 404/400/422/503 naming the problem."""
        try:
            check_name(name)
        except RegistryError as e:
            raise HTTPException(422, str(e)) from None
        try:
            version = self.registry.promoted_version(name)
            with self._lock:
                model = self._models.get(name)
                if model is None or model.card.version != version:
                    model = self.registry.load(name, version)
                    self._models[name] = model
                    self.metrics.load_seconds.labels(name, version).set(model.load_seconds)
        except ModelNotFoundError as e:
            raise HTTPException(404, str(e)) from None
        except RegistryError as e:
            logger.error("cannot serve model %r: %s", name, e)  # paths stay in the server log
            raise HTTPException(503, f"model {name!r} cannot be loaded; the details are in the server log") from None
        if model.card.task != task:
            raise HTTPException(400, f"model {name!r} is {_a(model.card.task)} model, not {_a(task)} model; "
                                     f"use POST /v1/{model.card.task}/classify")
        return model


def _check_limits(max_batch: int, max_text_chars: int, max_body_bytes: int) -> None:
    """Each limit must be a positive int."""
    for key, value in (("max_batch", max_batch), ("max_text_chars", max_text_chars), ("max_body_bytes", max_body_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key} must be a positive int, got {value!r}")


def create_app(
    registry: ModelRegistry | str | os.PathLike | None = None,
    *,
    max_batch: int = 64,
    max_text_chars: int = 512,
    max_body_bytes: int = 1_000_000,
) -> FastAPI:
    """The service over `registry` (a ModelRegistry, a registry folder, or None for the default registry)."""
    from .. import __version__

    _check_limits(max_batch, max_text_chars, max_body_bytes)
    if not isinstance(registry, ModelRegistry):
        registry = ModelRegistry(registry)
    metrics = ServiceMetrics()
    cache = ModelCache(registry, metrics)
    app = FastAPI(title="bigmodel-course model service", version=__version__,
                  description="Text and digit classification with the promoted models of a model registry.")
    app.state.registry, app.state.metrics, app.state.models = registry, metrics, cache
    app.state.limits = {"max_batch": max_batch, "max_text_chars": max_text_chars, "max_body_bytes": max_body_bytes}

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = validation_message(exc.errors())
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    def classify(model: LoadedModel, inputs) -> dict:
        """Predict and count the items (runs in the thread pool)."""
        try:
            predictions = model.predict(inputs)
        except InputError as e:
            raise HTTPException(422, str(e)) from None
        metrics.items.labels(model.card.name, model.card.version).inc(len(predictions))
        return {"model": model.card.name, "version": model.card.version, "predictions": predictions}

    @app.post("/v1/text/classify", response_model=ClassifyResponse, responses=_ERRORS)
    async def classify_text(body: TextRequest) -> dict:
        """Classify a batch of texts with the promoted version of a text model."""
        try:
            texts = check_texts(body.texts, max_items=max_batch, max_chars=max_text_chars)
        except InputError as e:
            raise HTTPException(422, str(e)) from None

        def run() -> dict:
            return classify(cache.get(body.model, "text"), texts)

        return await run_in_threadpool(run)

    async def _image_json(request: Request) -> tuple[str, list]:
        """Model name and images of a JSON image request."""
        try:
            body = ImageRequest.model_validate_json(await request.body())
        except ValidationError as e:
            status, message = validation_message(e.errors(include_url=False))
            raise HTTPException(status, message) from None
        if len(body.images) > max_batch:
            raise HTTPException(422, f"too many images: {len(body.images)}; at most {max_batch} per request")
        return body.model, body.images

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

    @app.post("/v1/image/classify", response_model=ClassifyResponse, responses=_ERRORS, openapi_extra=_IMAGE_BODY)
    async def classify_image(request: Request) -> dict:
        """Classify 8×8 digit images (JSON arrays, or PNG uploads in the multipart field `files`)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
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
        elif content_type == "application/json" or content_type.endswith("+json"):
            name, images = await _image_json(request)

            def run() -> dict:
                model = cache.get(name, "image")
                prep = model.card.preprocessing
                try:
                    checked = check_images(images, int(prep["image_size"]), float(prep["max_value"]), max_batch)
                except InputError as e:
                    raise HTTPException(422, str(e)) from None
                return classify(model, checked)
        else:
            raise HTTPException(415, f"unsupported Content-Type {content_type or 'none'!r}; send application/json "
                                     "or multipart/form-data")
        return await run_in_threadpool(run)

    @app.get("/v1/models", response_model=ModelsResponse, responses=_ERRORS)
    def list_models() -> dict:
        """Every version of every registered model: name, version, sha256 of the weights, metrics, created, promoted."""
        try:
            return {"models": [card.summary() for card in registry.list()]}
        except RegistryError as e:
            logger.error("cannot list the registry: %s", e)  # paths stay in the server log
            raise HTTPException(503, "the model registry cannot be read; the details are in the server log") from None

    @app.get("/healthz", response_model=Health)
    def healthz() -> dict:
        """The service is up; lists the models loaded so far."""
        return {"status": "ok", "loaded": cache.loaded()}

    @app.get("/metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus text format: requests, latency, items classified, model load time."""
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=ROUTES)
    return app
