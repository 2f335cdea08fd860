"""Admin routes of the service: publish a new version, promote, roll back, start and end a canary.

Every admin route needs the header `X-API-Key` equal to the key the server was started with (the
environment variable BIGMODEL_ADMIN_KEY); without a key the routes answer 401, with a wrong one 403, and
when the server has no key at all they are disabled (403). The key is compared in constant time and
never logged or echoed. The key is checked before the request body is read (an unauthenticated client
cannot make the server buffer a model upload), and a request that carries anything in its URL's query string
is refused: URLs are written to access logs, so a key sent there would leak. A version is promoted only
after it loaded: a corrupt version is refused with 409 and the promoted version stays what it was.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .architectures import build_model, parameter_count
from .canary import clear_canary, get_canary, set_canary
from .checks import InvalidNameError, ModelNotFoundError, RegistryError, check_name, check_version
from .middleware import logger
from .registry import TOKENIZER_FILE, ModelRegistry
from .schemas import ErrorResponse, ModelInfo, StrictRequest

ADMIN_KEY_ENV, ADMIN_HEADER, MIN_KEY_CHARS = "BIGMODEL_ADMIN_KEY", "X-API-Key", 16
ADMIN_PREFIX = "/v1/admin"
UPLOAD_ROUTE = ADMIN_PREFIX + "/models/{name}/versions"  # the one route whose bodies (model files) may be large
# every admin route: the key (401/403), the model or version (404/422), the registry (409/503); the routes that read a
# body can also answer 400 (malformed body) and 413 (body too large)
_ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 503)}
_BODY_ERRORS = {code: {"model": ErrorResponse} for code in (400, 413)}
_PUBLISH_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["metadata", "weights"],
    "properties": {"metadata": {"type": "string", "description": "JSON: task, architecture, config, labels, "
                                                                 "metrics, preprocessing, description"},
                   "weights": {"type": "string", "format": "binary", "description": "model.safetensors"},
                   "tokenizer": {"type": "string", "format": "binary", "description": "tokenizer.json (text models)"}},
}}}}}
_METADATA_KEYS = {"task", "architecture", "config", "labels", "metrics", "preprocessing", "description"}


class PromoteRequest(StrictRequest):
    """POST /v1/admin/models/{name}/promote."""

    version: StrictStr = Field(description="the version to promote, e.g. 'v2'", examples=["v2"])


class CanaryRequest(StrictRequest):
    """PUT /v1/admin/models/{name}/canary."""

    version: StrictStr = Field(description="the candidate version", examples=["v2"])
    fraction: float = Field(gt=0, lt=1, description="share of requests the candidate answers, in (0, 1)",
                            examples=[0.1])


class CanaryInfo(BaseModel):
    """The canary of a model (version None: no canary)."""

    name: str
    version: str | None
    fraction: float


def admin_key_from_env() -> str | None:
    """The admin key from BIGMODEL_ADMIN_KEY (None when unset or empty); ValueError if it cannot serve as a key."""
    key = os.environ.get(ADMIN_KEY_ENV) or None
    check_admin_key(key, ADMIN_KEY_ENV)
    return key


def check_admin_key(key: str | None, what: str = "the admin key") -> None:
    """None (admin routes disabled) or a key of at least MIN_KEY_CHARS printable ASCII characters without spaces
    (what an HTTP header carries unchanged: a key with spaces at its ends or non-ASCII letters could never match);
    the error never shows the key."""
    if key is not None and (not isinstance(key, str) or re.fullmatch(r"[\x21-\x7e]{%d,}" % MIN_KEY_CHARS, key) is None):
        raise ValueError(f"{what} must be at least {MIN_KEY_CHARS} printable ASCII characters without spaces "
                         f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")


def _key_problem(expected: str | None, headers: Headers, query_string: bytes) -> tuple[int, str] | None:
    """(status, message) when an admin request must be refused, None when its key is right."""
    if query_string:
        return 400, (f"admin routes take no query parameters; send the key in the {ADMIN_HEADER} header "
                     "(URLs are written to logs)")
    if expected is None:
        return 403, f"admin routes are disabled: the server was started without {ADMIN_KEY_ENV}"
    given = headers.get(ADMIN_HEADER)
    if not given:
        return 401, f"missing {ADMIN_HEADER} header"
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode()):
        return 403, f"invalid {ADMIN_HEADER}"
    return None


class AdminGate:
    """ASGI middleware: check the admin key of /v1/admin requests before their body is read (the one place the
    key is checked; create_app installs it in front of the admin routes)."""

    def __init__(self, app: ASGIApp, admin_key: str | None) -> None:
        self.app, self.admin_key = app, admin_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] + "/").startswith(ADMIN_PREFIX + "/"):
            problem = _key_problem(self.admin_key, Headers(scope=scope), scope.get("query_string", b""))
            if problem is not None:
                status, message = problem
                headers = {"WWW-Authenticate": ADMIN_HEADER} if status == 401 else {}
                await JSONResponse({"detail": message}, status_code=status, headers=headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _check_names(name: str, version: str | None = None) -> None:
    """422 for a malformed model name or version (before the registry is touched)."""
    try:
        check_name(name)
        if version is not None:
            check_version(version)
    except InvalidNameError as e:
        raise HTTPException(422, str(e)) from None


def _preload(cache, name: str, version: str) -> None:
    """Load a version before it takes traffic; 409 without file paths (they stay in the server log) if it does not."""
    try:
        cache.preload(name, version)
    except ModelNotFoundError:
        raise
    except RegistryError as e:
        logger.error("refused to route traffic to %s %s: it does not load: %s", name, version, e)
        raise HTTPException(409, f"model {name!r} version {version} does not load (missing, corrupt or tampered "
                                 "files); nothing was changed; the details are in the server log") from None


def _registry_errors(e: RegistryError) -> HTTPException:
    """404 for unknown models and versions, 422 for malformed names, 409 for everything else the registry refused."""
    status = 404 if isinstance(e, ModelNotFoundError) else 422 if isinstance(e, InvalidNameError) else 409
    return HTTPException(status, str(e).split("\n")[0][:280])


def _check_size(metadata: dict, max_upload_bytes: int | None) -> None:
    """422 before building the model when its config describes more parameters than an upload can carry
    (2 bytes each, the smallest floating-point type the weights can arrive in)."""
    try:
        n = parameter_count(metadata["architecture"], metadata["config"])
    except Exception as e:  # unknown architecture or a config that does not build
        raise HTTPException(422, f"the config does not build {str(metadata['architecture'])[:40]!r}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    if max_upload_bytes is not None and 2 * n > max_upload_bytes:
        raise HTTPException(422, f"the config describes a model of {n:,} parameters; an upload of at most "
                                 f"{max_upload_bytes:,} bytes holds at most {max_upload_bytes // 2:,} (2 bytes each)")


def _publish_from_files(registry: ModelRegistry, name: str, metadata: dict, weights: bytes,
                        tokenizer: bytes | None, max_upload_bytes: int | None = None) -> dict:
    """Check the config's size, rebuild the model from its architecture and config, load the uploaded
    safetensors strictly, publish."""
    import safetensors.torch

    _check_size(metadata, max_upload_bytes)
    with tempfile.TemporaryDirectory(prefix="bigmodel-publish-") as tmp:
        weights_path = Path(tmp) / "model.safetensors"
        weights_path.write_bytes(weights)
        try:
            model = build_model(metadata["architecture"], metadata["config"])
            safetensors.torch.load_model(model, str(weights_path), strict=True)
        except Exception as e:  # unknown architecture, bad config, unreadable or mismatched weights
            raise HTTPException(422, f"the weights do not load into {metadata['architecture']!r}: "
                                     f"{str(e).splitlines()[0][:200]}") from None
        files = None
        if tokenizer is not None:
            (Path(tmp) / TOKENIZER_FILE).write_bytes(tokenizer)
            files = {TOKENIZER_FILE: Path(tmp) / TOKENIZER_FILE}
        try:
            card = registry.publish(name, model, task=metadata["task"], architecture=metadata["architecture"],
                                    config=metadata["config"], labels=metadata["labels"],
                                    metrics=metadata.get("metrics", {}), preprocessing=metadata["preprocessing"],
                                    files=files, description=metadata.get("description", ""))
        except RegistryError as e:
            raise HTTPException(422, str(e)[:280]) from None
    logger.info("published %s %s through the admin API", card.name, card.version)
    return card.summary()


def admin_router(registry: ModelRegistry, cache, max_upload_bytes: int | None = None) -> APIRouter:
    """The admin routes over `registry` (mount them behind AdminGate, which checks the key); `cache` (the app's
    ModelCache) loads a version before it is promoted; an uploaded config may describe at most
    max_upload_bytes / 2 parameters."""
    router = APIRouter(prefix=ADMIN_PREFIX, tags=["admin"], responses=_ERRORS)

    @router.post("/models/{name}/versions", status_code=201, response_model=ModelInfo, openapi_extra=_PUBLISH_BODY,
                 responses=_BODY_ERRORS)
    async def publish(name: str, request: Request) -> dict:
        """Publish a new version (not promoted) from uploaded safetensors weights, metadata and tokenizer."""
        _check_names(name)
        try:
            form = await request.form(max_files=2, max_fields=2)
        except Exception as e:  # python-multipart and starlette raise several types for broken bodies
            raise HTTPException(400, f"malformed multipart body: {getattr(e, 'detail', type(e).__name__)}") from None
        try:
            raw, weights, tokenizer = form.get("metadata"), form.get("weights"), form.get("tokenizer")
            if not isinstance(raw, str):
                raise HTTPException(422, "missing form field 'metadata' (a JSON object)")
            try:
                metadata = json.loads(raw)
            except json.JSONDecodeError as e:
                raise HTTPException(422, f"metadata is not JSON: {e}") from None
            if not isinstance(metadata, dict):
                raise HTTPException(422, "metadata must be a JSON object")
            missing = sorted({"task", "architecture", "config", "labels", "preprocessing"} - set(metadata))
            unknown = sorted(set(metadata) - _METADATA_KEYS)
            if missing or unknown:
                raise HTTPException(422, f"metadata: missing keys {missing}, unknown keys {unknown}")
            if not isinstance(weights, UploadFile):
                raise HTTPException(422, "missing file field 'weights' (model.safetensors)")
            if tokenizer is not None and not isinstance(tokenizer, UploadFile):
                raise HTTPException(422, "'tokenizer' must be a file upload")
            weight_bytes = await weights.read()
            tokenizer_bytes = await tokenizer.read() if tokenizer is not None else None
        finally:
            await form.close()
        return await run_in_threadpool(_publish_from_files, registry, name, metadata, weight_bytes, tokenizer_bytes,
                                       max_upload_bytes)

    @router.post("/models/{name}/promote", response_model=ModelInfo, responses=_BODY_ERRORS)
    def promote(name: str, body: PromoteRequest) -> dict:
        """Load and check `version`, then promote it; a version that does not load is refused (409)."""
        _check_names(name, body.version)
        try:
            _preload(cache, name, body.version)
            card = registry.promote(name, body.version)
            canary = get_canary(registry, name)
            if canary is not None and canary.version == card.version:
                clear_canary(registry, name)  # the candidate graduated
        except RegistryError as e:
            raise _registry_errors(e) from None
        logger.info("promoted %s %s through the admin API", card.name, card.version)
        return card.summary()

    @router.post("/models/{name}/rollback", response_model=ModelInfo)
    def rollback(name: str) -> dict:
        """Promote again the version that was promoted before the current one."""
        _check_names(name)
        try:
            card = registry.rollback(name)
        except RegistryError as e:
            raise _registry_errors(e) from None
        logger.info("rolled back %s to %s through the admin API", card.name, card.version)
        return card.summary()

    @router.put("/models/{name}/canary", response_model=CanaryInfo, responses=_BODY_ERRORS)
    def start_canary(name: str, body: CanaryRequest) -> dict:
        """Send a fraction of the requests for `name` to a candidate version (loaded and checked first)."""
        _check_names(name, body.version)
        try:
            _preload(cache, name, body.version)
            canary = set_canary(registry, name, body.version, body.fraction)
        except RegistryError as e:
            raise _registry_errors(e) from None
        return {"name": name, "version": canary.version, "fraction": canary.fraction}

    @router.delete("/models/{name}/canary", response_model=CanaryInfo)
    def end_canary(name: str) -> dict:
        """End the canary: every request goes to the promoted version again."""
        _check_names(name)
        try:
            clear_canary(registry, name)
        except RegistryError as e:
            raise _registry_errors(e) from None
        return {"name": name, "version": None, "fraction": 0.0}

    return router
