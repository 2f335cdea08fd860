"""Prometheus metrics of one service instance, in its own CollectorRegistry (so tests can create many apps)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"  # the label value of every method (and route) outside the fixed set
CLIENT_CLOSED = 499  # the status counted for a client that went away before its answer (nginx's convention)


def method_label(method: str) -> str:
    """The method's label value: one of METHODS, else 'other' (clients choose method names freely)."""
    return method if method in METHODS else OTHER


class ServiceMetrics:
    """Requests by route/method/status, latency by route; items, predict time, load time and load failures by
    model/version; requests per micro-batch.

    Every label takes its values from a bounded set: routes from the app's route list ('other' for the rest),
    methods from METHODS ('other'), status codes, and model/version pairs that exist in the registry.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("bigmodel_http_requests", "HTTP requests by route, method and status code",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("bigmodel_http_request_duration_seconds", "Time to answer a request, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.items = Counter("bigmodel_items_classified", "Inputs classified, by model and version",
                             ["model", "version"], registry=self.registry)
        self.model_latency = Histogram("bigmodel_model_predict_seconds", "Time to classify one request's inputs, "
                                       "by model and version", ["model", "version"], buckets=LATENCY_BUCKETS,
                                       registry=self.registry)
        self.load_failures = Counter("bigmodel_model_load_failures", "Model versions that failed to load",
                                     ["model", "version"], registry=self.registry)
        self.batch_requests = Histogram("bigmodel_micro_batch_requests", "Requests gathered into one micro-batch",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.load_seconds = Gauge("bigmodel_model_load_seconds", "Seconds to verify and load a model version",
                                  ["model", "version"], registry=self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and record its latency."""
        self.requests.labels(route, method_label(method), str(int(status))).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
