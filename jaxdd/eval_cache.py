"""Evaluation results cached per (set, architecture, protocol): `<run folder>/eval_cache/<arch>-<hash>.json`.

The key (`tag`) holds everything an architecture's accuracies depend on: a digest of the set's images and
labels, the architecture, the protocol, the number of networks and their keys, the test set and the kind
of student. A rerun of a finished run, or a study cell resumed during its evaluation, reads the
architectures already evaluated instead of training their networks again; any change to the key is
another entry. An unreadable entry counts as missing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from jaxdd import reporting


def set_digest(images, labels) -> str:
    """sha256 of the set's images [N, H, W, C] (float32) and labels [N] (int32)."""
    digest = hashlib.sha256()
    for array, dtype in ((images, np.float32), (labels, np.int32)):
        array = np.ascontiguousarray(np.asarray(array, dtype))
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def entry_path(directory: Path, tag: dict) -> Path:
    """The entry of `tag` (a JSON-able dict naming its 'arch')."""
    key = hashlib.sha256(json.dumps(tag, sort_keys=True, default=str).encode()).hexdigest()[:20]
    safe = "".join(ch if ch.isalnum() or ch in "+-_." else "_" for ch in str(tag["arch"]))
    return Path(directory) / f"{safe}-{key}.json"


def load(path: Path, tag: dict) -> dict | None:
    """The cached summary at `path` when it exists, is readable and was stored under `tag`."""
    try:
        entry = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("tag") != json.loads(json.dumps(tag, default=str)):
        return None
    return entry.get("summary")


def store(path: Path, tag: dict, summary: dict) -> None:
    """Writes `summary` under `tag` atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    reporting.write_json(path, {"tag": json.loads(json.dumps(tag, default=str)), "summary": summary})
