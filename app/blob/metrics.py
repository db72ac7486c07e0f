"""The blob cache's Prometheus metrics, on the process-wide ``prometheus_client.REGISTRY``.

Defined once per process (module import); every cache instance updates the same series.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

REQUESTS = Counter(
    "vapp_blob_requests_total",
    "Registry requests served by the cache",
    ["kind", "status", "cache"],  # kind: manifest|blob|tags|base; cache: hit|miss|stale|none
    registry=REGISTRY,
)
BYTES_SERVED = Counter("vapp_blob_bytes_served_total", "Bytes sent to clients", ["upstream"], registry=REGISTRY)
BYTES_PULLED = Counter("vapp_blob_bytes_pulled_total", "Bytes fetched from upstream", ["upstream"], registry=REGISTRY)
UPSTREAM_LATENCY = Histogram(
    "vapp_blob_upstream_request_seconds",
    "Upstream header-phase latency per endpoint",
    ["upstream", "mirror"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
SINGLEFLIGHT_WAITERS = Gauge(
    "vapp_blob_singleflight_waiters", "Clients reading an in-flight upstream download", registry=REGISTRY
)
INFLIGHT_DOWNLOADS = Gauge("vapp_blob_inflight_downloads", "Upstream blob downloads in progress", registry=REGISTRY)
CACHE_SIZE = Gauge("vapp_blob_cache_size_bytes", "Bytes held by the cache", registry=REGISTRY)
CACHE_BLOBS = Gauge("vapp_blob_cache_blobs", "Blobs held by the cache", registry=REGISTRY)
EVICTIONS = Counter("vapp_blob_evictions_total", "Blobs evicted", ["reason"], registry=REGISTRY)
STALE_SERVED = Counter(
    "vapp_blob_stale_served_total", "Tags served from cache because every upstream failed", ["upstream"],
    registry=REGISTRY,
)  # fmt: skip
DIGEST_FAILURES = Counter(
    "vapp_blob_digest_failures_total", "Upstream content that failed verification", ["upstream"], registry=REGISTRY
)
RESUMES = Counter("vapp_blob_download_resumes_total", "Interrupted downloads resumed", ["mode"], registry=REGISTRY)
PREPULL_JOBS = Gauge("vapp_blob_prepull_jobs", "Prepull jobs by state", ["state"], registry=REGISTRY)
PREPULL_BYTES = Counter("vapp_blob_prepull_bytes_total", "Bytes pulled by prepull jobs", registry=REGISTRY)
