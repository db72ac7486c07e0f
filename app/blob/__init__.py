"""The node's registry pull-through cache (issue 3).

::

    api/registry (/v2 ASGI)   services/cache.py (verbs)   blob/fetcher.py (runtime's pull, in-process)
                 \\                    |                    /
                  ---------------> BlobCache (cache.py) <--
                 manifests/tags (byte-for-byte, TTL + HEAD revalidation, serve stale)
                 blobs: content store hit, else FlightTable (flight.py: single-flight stream-through)
                    |                         |
              MetaStore (meta.py: SQLModel)  UpstreamPool (upstream.py: endpoints, auth.py, mirrors.py race)
              Evictor (eviction.py)  Prepuller (prepull.py)  metrics.py
"""
