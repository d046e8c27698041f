"""What a batch output folder says about each asset: done (and for which inputs), failed, or not yet.

Layout of ``DIR`` (docs/batch.md):

- ``DIR/<id>/``: the files of ``python -m engine stylize`` (written all or nothing); its
  ``run.json`` carries ``batch.fingerprint``, the hash of everything that determines the result.
- ``DIR/<id>/failure.json``: the last failed attempt of the asset (fingerprint, error, seconds,
  device); removed when the asset succeeds. An earlier result in the folder is left as it was.
- ``DIR/<id>/checkpoint.pt``: the checkpoint of an asset stopped mid-run, continued next time.
- ``DIR/summary.jsonl``: one line per asset of the manifest, rewritten after every asset.

The asset's state is read from its own folder, so job-array shards that share ``DIR`` never write
the same file, and every invocation can rebuild the summary from the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

from .. import __version__
from ..files import atomic_writer
from .manifest import BatchAsset

FAILURE_FILE = "failure.json"
SUMMARY_FILE = "summary.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
RUN_RECORD = "run.json"
_CHUNK = 1 << 20


def asset_fingerprint(asset: BatchAsset, models: str) -> str:
    """sha256 of everything that determines the asset's result: the engine's version, the content of
    every input file, the prompt and options, every setting (iterations included) and the model
    source. Neither the device nor the asset's place in the manifest counts."""
    h = hashlib.sha256()
    fields = {"engine": __version__, "mesh": asset.mesh if asset.is_sample else "file",
              "prompt": asset.prompt, "whole": asset.whole, "parts": asset.parts == "labels",
              "relief": list(asset.relief), "images": [value.partition("=")[0] for value in asset.images],
              "lock": list(asset.lock), "merge_vertices": asset.merge_vertices,
              "settings": asset.settings().flat(),
              "models": models if models in ("tiny", "default") else os.path.abspath(models)}
    h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for path in asset.input_files():
        h.update(_file_hash(path).encode())
    return h.hexdigest()


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:  # gone since the manifest was read: the asset's run reports it
        return f"unreadable:{exc.errno}"
    return h.hexdigest()


@dataclass(frozen=True)
class AssetOutcome:
    """How one asset ended in one invocation (a plain value: it crosses process boundaries).

    ``status``: ``done``, ``failed`` or ``cancelled`` (stopped mid-run; its checkpoint is kept).
    ``seconds`` is the asset's time in its worker; ``error`` the message a failure gave.
    """

    id: str
    status: str
    seconds: float = 0.0
    device: str = ""
    error: str = ""


@dataclass(frozen=True)
class AssetState:
    """What the output folder holds for an asset: ``done`` (a result of these very inputs),
    ``failed`` (the last attempt at these inputs failed), or ``pending``, with the record's figures."""

    status: str
    seconds: float = 0.0
    device: str = ""
    error: str = ""


def asset_folder(out_dir: str, asset: BatchAsset) -> str:
    return os.path.join(out_dir, asset.id)


def read_state(out_dir: str, asset: BatchAsset, fingerprint: str | None) -> AssetState:
    """The asset's state in ``out_dir`` for the inputs whose fingerprint is ``fingerprint``; with
    None, whatever the folder last recorded (another shard's asset, whose files are not hashed)."""
    folder = asset_folder(out_dir, asset)
    record = _read_json(os.path.join(folder, RUN_RECORD))
    batch = record.get("batch") if isinstance(record.get("batch"), dict) else {}
    if "fingerprint" in batch and fingerprint in (None, batch["fingerprint"]):
        return AssetState("done", float(batch.get("seconds", 0.0)), str(record.get("device", "")))
    failure = _read_json(os.path.join(folder, FAILURE_FILE))
    if "fingerprint" in failure and fingerprint in (None, failure["fingerprint"]):
        return AssetState("failed", float(failure.get("seconds", 0.0)), str(failure.get("device", "")),
                          str(failure.get("error", "")))
    return AssetState("pending")


def write_failure(folder: str, fingerprint: str, outcome: AssetOutcome, details: str = "") -> None:
    """Record a failed attempt in the asset's folder (atomically; an earlier result stays)."""
    os.makedirs(folder, exist_ok=True)
    entry = {"fingerprint": fingerprint, **asdict(outcome), "details": details}
    with atomic_writer(os.path.join(folder, FAILURE_FILE)) as fh:
        fh.write(json.dumps(entry, indent=2).encode())


def clear_failure(folder: str) -> None:
    path = os.path.join(folder, FAILURE_FILE)
    if os.path.exists(path):
        os.remove(path)


def write_summary(out_dir: str, rows: list[dict]) -> str:
    """``DIR/summary.jsonl``: one JSON line per asset, replaced atomically; returns its path."""
    path = os.path.join(out_dir, SUMMARY_FILE)
    with atomic_writer(path) as fh:
        fh.write("".join(json.dumps(row) + "\n" for row in rows).encode())
    return path


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
