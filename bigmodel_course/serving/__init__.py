"""Serving: a versioned model registry on disk, a FastAPI service for the text and image classifiers (optional
micro-batching, admin routes behind an API key, canary releases) and data-drift checks.

    from bigmodel_course.serving import ModelRegistry, create_app, background_server

    registry = ModelRegistry()                      # ~/.cache/bigmodel_course/registry, or $BIGMODEL_REGISTRY
    card = registry.publish("digits", model, task="image", architecture="vit", config=cfg.to_dict(),
                            labels=[str(d) for d in range(10)], metrics={"accuracy": 0.99},
                            preprocessing={"image_size": 8, "max_value": 16.0, "mean": m, "std": s})
    registry.promote("digits", card.version)
    with background_server(registry) as url:        # a `bigmodel-course serve` process on 127.0.0.1
        httpx.post(f"{url}/v1/image/classify", json={"model": "digits", "images": [...]})
"""

from .admin import ADMIN_HEADER, ADMIN_KEY_ENV
from .app import create_app
from .architectures import ARCHITECTURE_TASKS, ARCHITECTURES, build_model
from .batching import MicroBatcher
from .canary import Canary, CanaryVerdict, VersionStats, canary_verdict, clear_canary, get_canary, set_canary
from .drift import DriftMonitor, DriftReport, psi
from .loaded import LoadedModel
from .loadtest import LoadTestResult, bench_serve, publish_tiny_models, run_load_test
from .preprocess import InputError, decode_png, encode_png
from .registry import ModelCard, ModelNotFoundError, ModelRegistry, RegistryError
from .server import background_server, serve

__all__ = [
    "ADMIN_HEADER",
    "ADMIN_KEY_ENV",
    "Canary",
    "CanaryVerdict",
    "VersionStats",
    "canary_verdict",
    "DriftMonitor",
    "DriftReport",
    "MicroBatcher",
    "clear_canary",
    "get_canary",
    "psi",
    "set_canary",
    "ARCHITECTURES",
    "ARCHITECTURE_TASKS",
    "InputError",
    "LoadTestResult",
    "LoadedModel",
    "ModelCard",
    "ModelNotFoundError",
    "ModelRegistry",
    "RegistryError",
    "background_server",
    "bench_serve",
    "build_model",
    "create_app",
    "decode_png",
    "encode_png",
    "publish_tiny_models",
    "run_load_test",
    "serve",
]
