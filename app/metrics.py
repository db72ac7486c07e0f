"""Prometheus metrics of the front doors, on the default registry.

Engines define their own metrics in their own packages on the same default
registry (``prometheus_client.REGISTRY``), which also carries the process and
platform collectors. Naming: ``vapp_`` prefix, ``_total`` counters, ``_seconds``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter(
    "vapp_http_requests_total", "Admin HTTP requests by route and status", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "vapp_http_request_duration_seconds", "Admin HTTP request latency", ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
GRPC_CALLS = Counter("vapp_grpc_calls_total", "CRI gRPC calls by method and code", ["method", "code"])
GRPC_LATENCY = Histogram(
    "vapp_grpc_call_duration_seconds", "CRI gRPC call latency", ["method"], buckets=_LATENCY_BUCKETS
)
VAPPC_COMMANDS = Counter(
    "vapp_vappc_commands_total", "vappc commands by command and outcome", ["command", "outcome"]
)
VAPPC_LATENCY = Histogram(
    "vapp_vappc_command_duration_seconds", "vappc command latency", ["command"], buckets=_LATENCY_BUCKETS
)
READY = Gauge("vapp_ready", "1 once every listener is bound and the daemon serves")
BUILD_INFO = Gauge("vapp_build_info", "Build information", ["version"])
