"""Request and response bodies of the service (pydantic), and short readable validation messages."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field


class TextRequest(BaseModel):
    """POST /v1/text/classify: a batch of texts for one model."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="registered model name, e.g. 'reviews'", examples=["reviews"])
    texts: list[str] = Field(description="texts to classify (non-empty, each within the length limit)",
                             examples=[["这本书写得很好，推荐！", "质量太差，退货了"]])


class ImageRequest(BaseModel):
    """POST /v1/image/classify as JSON: a batch of 8×8 arrays on the load_digits scale (0..16)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="registered model name, e.g. 'digits'", examples=["digits"])
    images: list[list[list[float]]] = Field(description="images, each 8 rows of 8 numbers in [0, max_value]")


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


class ModelsResponse(BaseModel):
    """Every version of every registered model."""

    models: list[ModelInfo]


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
    if kind == "missing":
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
