"""THE content store: verified, content-addressed blobs shared by the registry cache and the image store.

One copy of every layer on the node: the blob cache writes what it fetched from
upstream, the runtime's image store reads the same files to unpack them.

Disk layout (``root`` is ``<state_dir>/content``)::

    root/
      sha256/<hex>              committed blobs, mode 0444, verified (digest and size)
      ingest/<key>/             one in-progress write; key = sha256(ref)[:32]
        data                    bytes written so far (the resume offset is its size)
        meta.json               {"ref", "expected", "size", "started"}
        lock                    flock(2)ed by the one live writer of this ref

Lifecycle of a blob::

    writer(ref, expected_digest, expected_size)      (opens or RESUMES ingest/<key>/)
        │  write(bytes) ... (hash updated as bytes arrive; on resume the hash is
        │                    rebuilt by re-reading data, so it covers the whole blob)
        ├── close()   -> partial data kept; a later writer(ref, ...) resumes at .offset
        ├── abort()   -> ingest/<key>/ removed
        └── commit()  -> flush, fsync(data), check size, check digest,
                         rename(data, sha256/<hex>), fsync(sha256/), remove ingest/<key>/
                         mismatch: raise DigestMismatch, remove the ingest, nothing visible
                         digest already present: no-op (ingest removed)
    info / exists / open / read(offset, length) / path (for sendfile) / walk / delete

After a crash (kill -9), :meth:`LocalContentStore.cleanup_stale_ingests` removes
ingests nobody holds locked (optionally only those older than an age, so resumable
downloads survive a quick restart). A blob under ``sha256/`` is always complete and
verified because it only ever appears there by an atomic rename after verification.
"""

from app.content.store import (
    ContentInfo,
    ContentStore,
    DigestMismatch,
    IngestStatus,
    LocalContentStore,
    Writer,
)

__all__ = ["ContentInfo", "ContentStore", "DigestMismatch", "IngestStatus", "LocalContentStore", "Writer"]
