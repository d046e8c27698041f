"""One worker's side of a batch: stylize assets one after another with models loaded once.

Both executors use it: the local one in the batch's own process, the Ray one inside each actor.
An asset's error is caught, recorded in its folder and returned as a failed outcome, so the batch
goes on; only a cancel (or Ctrl-C) ends the worker's current asset early.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
import warnings

from ..errors import Cancelled, CheckpointError, OutputError, PartstyleError
from ..events import CancelToken, EventSink, NoticeEvent, ignore_events
from .manifest import BatchAsset
from .state import CHECKPOINT_FILE, AssetOutcome, asset_folder, clear_failure, write_failure


class AssetRunner:
    """Stylizes batch assets in this process, keeping one model store (models load on first use and
    stay loaded for every later asset on the same device).

    Args:
        models: the model source (``tiny``, ``default`` or a folder), as for ``stylize``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        allow_download: let ``default`` download missing models.
    """

    def __init__(self, models: str = "tiny", *, device: str = "auto", allow_download: bool = False):
        from ..devices import resolve_device
        from ..models import ModelStore

        self.store = ModelStore(models, allow_download=allow_download)
        self.device = resolve_device(device)

    def run(self, asset: BatchAsset, out_dir: str, fingerprint: str, *, on_event: EventSink = ignore_events,
            cancel: CancelToken | None = None) -> AssetOutcome:
        """Stylize ``asset`` into ``out_dir/<id>/`` (all or nothing) and return how it ended.

        A checkpoint left there by a stopped run of the same inputs is continued; one of other
        inputs is discarded. Failures are written to the folder's ``failure.json``.
        """
        from ..files import output_lock

        folder = asset_folder(out_dir, asset)
        started = time.perf_counter()
        device = str(self.device)
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(output_lock(folder, option=f"the folder of asset '{asset.id}'"))
            except OutputError as exc:  # another run is writing this asset: nothing of ours to record there
                return AssetOutcome(asset.id, "failed", 0.0, device, str(exc))
            return self._attempt(asset, folder, fingerprint, started, device, on_event, cancel)

    def _attempt(self, asset: BatchAsset, folder: str, fingerprint: str, started: float, device: str,
                 on_event: EventSink, cancel: CancelToken | None) -> AssetOutcome:
        """The asset's run with its folder held; any failure caught, recorded and returned."""
        try:
            self._stylize(asset, folder, fingerprint, started, on_event, cancel)
        except Cancelled:
            return AssetOutcome(asset.id, "cancelled", round(time.perf_counter() - started, 3), device)
        except Exception as exc:  # one asset's failure, whatever it is, must not end the batch
            outcome = AssetOutcome(asset.id, "failed", round(time.perf_counter() - started, 3), device,
                                   failure_message(exc))
            details = "" if isinstance(exc, PartstyleError) else traceback.format_exc()
            write_failure(folder, fingerprint, outcome, details)
            return outcome
        return AssetOutcome(asset.id, "done", round(time.perf_counter() - started, 3), device)

    def _stylize(self, asset: BatchAsset, folder: str, fingerprint: str, started: float, on_event: EventSink,
                 cancel: CancelToken | None) -> None:
        """The run itself, inside the asset's folder lock."""
        from ..api import stylize
        from ..export import read_surface_style, write_result
        from ..inputs import load_input_mesh, load_part_weights

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mesh = load_input_mesh(asset.mesh, merge_vertices=asset.merge_vertices)
        for w in caught:
            on_event(NoticeEvent(f"{asset.id}: {w.message}"))
        request = asset.request(
            parts=load_part_weights(asset.parts, mesh) if asset.parts else None,
            previous=read_surface_style(asset.previous, mesh.num_vertices) if asset.previous else None,
        )
        checkpoint = os.path.join(folder, CHECKPOINT_FILE)

        def attempt(resume: bool):
            return stylize(mesh, request, settings=asset.settings(), models=self.store, device=self.device,
                           on_event=on_event, cancel=cancel, checkpoint=checkpoint, resume=resume)

        if os.path.exists(checkpoint):
            try:
                result = attempt(resume=True)
            except CheckpointError:  # a stopped run of other inputs: start this one anew
                on_event(NoticeEvent(f"{asset.id}: its checkpoint is of other inputs; starting anew"))
                os.remove(checkpoint)
                result = attempt(resume=False)
        else:
            result = attempt(resume=False)
        seconds = round(time.perf_counter() - started, 3)
        write_result(result, folder, extra_record={
            "preset": asset.preset, "input": asset.mesh,
            "batch": {"id": asset.id, "line": asset.line, "fingerprint": fingerprint, "seconds": seconds},
        })
        if os.path.exists(checkpoint):
            os.remove(checkpoint)
        clear_failure(folder)


def failure_message(exc: BaseException) -> str:
    """One line for a failed asset: the engine's own message, or the kind and text of anything else
    (out of memory gets the way out)."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return (f"out of memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); try the preview "
                "preset, a smaller field.max_vertices, or fewer workers per GPU")
    if isinstance(exc, PartstyleError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
