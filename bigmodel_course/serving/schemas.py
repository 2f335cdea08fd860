"""Request and response bodies of the service (pydantic), and short readable validation messages.

Request bodies are validated in bounded time whatever a client sends: types are strict (a pixel is a JSON
number, never a string or a boolean), every list has a length limit that is checked before its items, lists
stop at their first bad item, and unknown fields are refused with one error however many there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr, model_validator
from pydantic_core import PydanticCustomError

MAX_IMAGE_SIDE = 64  # rows and columns accepted before the model's own image size is checked


class StrictRequest(BaseModel):
    """A request body: strict types, and unknown fields refused with a single error."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = cls.model_fields.keys()
            unknown = [key for key in data if key not in known]
            if unknown:
                more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
                raise PydanticCustomError("unexpected_fields", "unexpected field {field}{more}",
                                          {"field": repr(unknown[0][:40]), "more": more})
        return data


def _bounded_list(item, max_items: int, description: str | None = None, **kwargs) -> Any:
    """list[item] of at most `max_items`, checked before the items; validation stops at the first bad item."""
    return Annotated[list[item], Field(max_length=max_items, fail_fast=True, description=description, **kwargs)]


def request_models(max_batch: int = 64) -> tuple[type[BaseModel], type[BaseModel]]:
    """(TextRequest, ImageRequest) for a service that accepts at most `max_batch` inputs per request."""
    row = _bounded_list(StrictFloat, MAX_IMAGE_SIDE)  # strict: ints are numbers too, strings and booleans are not
    image = _bounded_list(row, MAX_IMAGE_SIDE)

    class TextRequest(StrictRequest):
        """POST /v1/text/classify: a batch of texts for one model."""

        model: StrictStr = Field(description="registered model name, e.g. 'reviews'", examples=["reviews"])
        texts: _bounded_list(StrictStr, max_batch, "texts to classify (non-empty, each within the length limit)",
                             examples=[["这本书写得很好，推荐！", "质量太差，退货了"]])

    class ImageRequest(StrictRequest):
        """POST /v1/image/classify as JSON: a batch of 8×8 arrays on the load_digits scale (0..16)."""

        model: StrictStr = Field(description="registered model name, e.g. 'digits'", examples=["digits"])
        images: _bounded_list(image, max_batch, "images, each 8 rows of 8 numbers in [0, max_value]")

    return TextRequest, ImageRequest


class Prediction(BaseModel):
    """The predicted class of one input and the probability of every class."""

    label: str
    label_id: int
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    """Predictions of the promoted version of a model, one per input, in input order."""

    model: str
    version: str
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    """One registered model version."""

    name: str
    version: str
    task: str
    architecture: str
    labels: list[str]
    metrics: dict[str, float]
    sha256: str
    created: str
    num_parameters: int
    description: str
    promoted: bool


class DamagedInfo(BaseModel):
    """A registry entry that cannot be read (version None: the model's promoted pointer or canary file)."""

    name: str
    version: str | None
    problem: str


class ModelsResponse(BaseModel):
    """Every readable version of every registered model, and the entries that cannot be read."""

    models: list[ModelInfo]
    damaged: list[DamagedInfo] = Field(default_factory=list)


class Health(BaseModel):
    """Liveness: the service answers; the models it has loaded so far."""

    status: str
    loaded: list[str]


class ErrorResponse(BaseModel):
    """Every error: one short message that names the problem."""

    detail: str


def _field(loc: Sequence) -> str:
    """('body', 'texts', 1) -> 'texts[1]'."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_message(errors: Sequence[dict]) -> tuple[int, str]:
    """(status, message) for pydantic/FastAPI validation errors: 400 for malformed JSON, else 422 naming the field."""
    if not errors:
        return 422, "invalid request"
    first = errors[0]
    kind, loc = first.get("type", ""), first.get("loc", ())
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error") or first.get("msg", "")
        where = f" at position {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        return 400, f"malformed JSON: {reason}{where}".rstrip()
    name = _field(loc)
    if kind == "unexpected_fields":
        return 422, first.get("msg", "unexpected field")
    if kind == "too_long":
        ctx = first.get("ctx") or {}
        if "[" not in name and "." not in name:  # a top-level list: 'texts', 'images'
            message = f"too many {name}: {ctx.get('actual_length')}; at most {ctx.get('max_length')} per request"
        else:
            message = f"{name} has {ctx.get('actual_length')} items; at most {ctx.get('max_length')}"
    elif kind == "missing":
        message = f"missing field '{name}'"
    elif kind == "extra_forbidden":
        message = f"unexpected field '{name}'"
    elif not name:
        message = f"request body must be a JSON object with Content-Type application/json ({first.get('msg', '')})"
    else:
        message = f"{name}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return 422, message
