"""Shared by the batch tests: a small manifest (two sample assets and a broken mesh) and helpers."""

from __future__ import annotations

import json
import os

import numpy as np

from engine.batch.manifest import Defaults, read_manifest

# Two iterations of the preview preset, small renders: each asset takes a few seconds on 2 cores.
QUICK = Defaults(preset="preview", iterations=2, overrides=("views.count=2", "render.resolution=64"))
ROWS = [
    {"id": "lamp", "mesh": "sample:lamp@2000", "prompt": "red base, blue shade", "parts": "labels", "seed": 3},
    {"id": "broken", "mesh": "broken.obj", "prompt": "red base"},
    {"id": "mug", "mesh": "sample:mug@2000", "prompt": "body: blue", "parts": "labels"},
]


def write_manifest(folder, rows=ROWS, name="assets.jsonl") -> str:
    """A JSONL manifest in ``folder`` (with the broken mesh its rows name); returns its path."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "broken.obj"), "w", encoding="utf-8") as fh:
        fh.write("this is not a mesh\n")
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def quick_assets(folder, rows=ROWS):
    return read_manifest(write_manifest(folder, rows), QUICK)


def summary(out) -> dict[str, dict]:
    with open(os.path.join(out, "summary.jsonl"), encoding="utf-8") as fh:
        return {row["id"]: row for row in map(json.loads, fh)}


def result_arrays(folder) -> dict[str, np.ndarray]:
    with np.load(os.path.join(folder, "result.npz")) as data:
        return {key: data[key] for key in data.files}
