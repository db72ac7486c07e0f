"""``python -m app.runtime.images.helper``: apply one layer, request/result as JSON.

Runs inside the mapped user namespace :mod:`rootless` creates (it would work as
root too). stdin: ``{"blob", "media_type", "dest", "options"}``; stdout, one
line: ``{"result": UnpackResult}`` or ``{"error": {...}, "type": "UnsafeEntry"}``.
``helper rm PATH...`` removes trees (files of subordinate IDs) instead;
``helper merge DEST LAYER...`` flattens layer snapshots (the copy snapshotter).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from app.errors import VappError
from app.runtime.images.safefs import remove_tree
from app.runtime.images.unpack import UnpackOptions, apply_layer


def main() -> int:
    if sys.argv[1:2] == ["rm"]:
        for path in sys.argv[2:]:
            remove_tree(path)
        return 0
    if sys.argv[1:2] == ["merge"]:
        from app.runtime.snapshots.copy import merge_layers

        merge_layers([Path(p) for p in sys.argv[3:]], Path(sys.argv[2]))
        return 0
    req = json.loads(sys.stdin.read())
    try:
        with open(req["blob"], "rb") as src:
            res = apply_layer(src, req["dest"], req["media_type"], UnpackOptions(**req["options"]))
    except VappError as exc:
        print(json.dumps({"error": exc.to_dict(), "type": type(exc).__name__}))
        return 1
    except OSError as exc:
        print(json.dumps({"error": {"message": f"unpack failed: {exc}"}, "type": "OSError"}))
        return 1
    print(json.dumps({"result": dataclasses.asdict(res)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
