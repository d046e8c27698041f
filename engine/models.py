"""The model store: resolves a model source to loaded models (downloads only through :mod:`engine.downloads`).

Sources:
- ``tiny``: the project's own small models, CLIP, Grounding DINO and the box-prompted segmenter,
  trained on the project's synthetic renders and shipped in ``engine/assets/tiny/`` (see
  docs/training.md); where a folder is missing, the untrained model of the same kind is built in
  code. Never touches the network.
- ``default``: the real models by hub id (:data:`DEFAULT_CLIP`, :data:`DEFAULT_GROUNDING`,
  :data:`DEFAULT_SEGMENTER`), each at the commit :data:`engine.downloads.MODEL_SOURCES` pins, taken
  from the local Hugging Face cache; downloaded (by :mod:`engine.downloads`) only when the store was
  created with ``allow_download=True``.
- a folder path: a folder holding one sub-folder per model role (``clip/``, ``grounding/``,
  ``segmenter/``), or a model folder itself (``config.json`` + ``model.safetensors`` + tokenizer
  files).

Only safetensors weights are loaded (pickled ``.bin`` files can run code when loaded), and
``trust_remote_code`` is never used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass

import torch

from .compat import GROUNDING_DELIMITER_IDS, grounding_delimiter_ids, require_grounding_support
from .downloads import HUB_PATTERNS, MODEL_SOURCES, ROLES, download_models, format_size, local_snapshot, source_for
from .errors import ModelFormatError, ModelNotFound
from .footprint import TINY_MODELS_FOLDER, ModelFootprint, model_footprint, role_folder
from .model_kernels import adapt_clip_to_device, adapt_grounding_to_device
from .shape_measurements import ShapeMeasurements

_HUB_IDS = {source.role: source.repo_id for source in MODEL_SOURCES}
DEFAULT_CLIP = _HUB_IDS["clip"]
DEFAULT_GROUNDING = _HUB_IDS["grounding"]
# The box-prompted segmenter (SAM 2 hiera-tiny in transformers' format, Apache-2.0).
DEFAULT_SEGMENTER = _HUB_IDS["segmenter"]
DEFAULT_SEGMENTER_REVISION = source_for(DEFAULT_SEGMENTER).revision
# The pinned commit of each hub model (engine/downloads.py holds the sources).
HUB_REVISIONS: dict[str, str] = {source.repo_id: source.revision for source in MODEL_SOURCES}
# CLIP's image normalization (the processor's image_mean / image_std) where a model folder has none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Grounding DINO's image normalization (ImageNet) and resize rule (shortest edge, longest-edge cap)
# where a model folder has no preprocessor_config.json.
GROUNDING_MEAN = (0.485, 0.456, 0.406)
GROUNDING_STD = (0.229, 0.224, 0.225)
GROUNDING_SIZE = 800
GROUNDING_MAX_SIZE = 1333
# The tiny model is run smaller: shortest edge 256, the same longest/shortest cap as 800/1333.
TINY_GROUNDING_SIZE = 256
TINY_GROUNDING_MAX_SIZE = 427
# SAM 2's input side (square) where a segmenter folder has no preprocessor_config.json, and the tiny one's.
SEGMENTER_SIZE = 1024
TINY_SEGMENTER_SIZE = 256
FETCH_COMMAND = "python -m engine fetch-models"
# The tiny CLIP trained by `python -m engine train-tiny-clip`, shipped with the engine; where it is
# missing, `tiny` falls back to the untrained tiny CLIP built in code.
TINY_CLIP_FOLDER = os.path.join(TINY_MODELS_FOLDER, "clip")
# The tiny Grounding DINO trained by `python -m engine train-tiny-grounding`, likewise.
TINY_GROUNDING_FOLDER = os.path.join(TINY_MODELS_FOLDER, "grounding")
# The tiny box-prompted segmenter trained by `python -m engine train-tiny-segmenter`, likewise.
TINY_SEGMENTER_FOLDER = os.path.join(TINY_MODELS_FOLDER, "segmenter")
_HUB_FILES = list(HUB_PATTERNS)
# Buffers a model rebuilds from its config, which a weights file may or may not hold (Swin's
# relative position index, text position ids): their absence is not a mismatch.
REBUILT_BUFFERS = ("relative_position_index", "position_ids")


@dataclass(frozen=True)
class ClipBundle:
    """A loaded CLIP: the model (eval mode, frozen), its tokenizer and its image normalization.

    Attributes:
        model: ``transformers.CLIPModel`` on the target device.
        tokenizer: the matching tokenizer.
        image_size: input side in pixels the vision tower expects.
        mean, std: per-channel normalization of 0..1 RGB images.
        name: where it came from (``tiny``, a hub id, or a folder).
    """

    model: object
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str


@dataclass(frozen=True)
class GroundingBundle:
    """A loaded Grounding DINO: the model (eval mode, frozen), its tokenizer and its preprocessing.

    Attributes:
        model: ``transformers.GroundingDinoForObjectDetection`` on the target device.
        tokenizer: the matching BERT tokenizer (fast, with offset mappings).
        size: the shortest image edge, in pixels, the processor resizes to.
        max_size: the cap on the longest edge after resizing.
        mean, std: per-channel normalization of 0..1 RGB images.
        name: where it came from (``tiny``, a hub id, or a folder).
    """

    model: object
    tokenizer: object
    size: int
    max_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str


@dataclass(frozen=True)
class SegmenterBundle:
    """A loaded box-prompted segmenter (SAM 2 family): the model (eval mode, frozen) and its preprocessing.

    Attributes:
        model: ``transformers.Sam2Model`` (or ``EdgeTamModel``) on the target device.
        size: the square input side, in pixels, images are resized to.
        mean, std: per-channel normalization of 0..1 RGB images.
        name: where it came from (``tiny``, a hub id, or a folder).
    """

    model: object
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str


#: role -> what makes a model of that role faster on a device (engine/model_kernels.py), where anything does
DEVICE_ADAPTERS = {"clip": adapt_clip_to_device, "grounding": adapt_grounding_to_device}


def frozen_on_device(model: torch.nn.Module, device: torch.device | str, role: str, *,
                     device_kernels: bool = True) -> torch.nn.Module:
    """``model`` frozen (no parameter gradients), moved to ``device`` and (unless ``device_kernels`` is
    False: the library's own, as on CUDA) given the kernels its ``role`` runs fastest with there: how
    every run, and the benchmarks that time it, prepare a model."""
    model.requires_grad_(False)
    model = model.to(device)
    if device_kernels and (adapt := DEVICE_ADAPTERS.get(role)) is not None:
        adapt(model, device)
    return model


class ModelStore:
    """Loads models from one source and keeps them for reuse within a process, with what runs
    measured on the shapes they styled (:attr:`measurements`: the add-on and a batch keep one store
    for all their runs, so a shape styled again is not measured or located again)."""

    def __init__(self, source: str = "tiny", *, allow_download: bool = False, cache_dir: str | None = None,
                 device_kernels: bool = True):
        self.source = source
        self.allow_download = allow_download
        self.cache_dir = cache_dir
        self.device_kernels = device_kernels  # False: the library's kernels on every device (frozen_on_device)
        self._loaded: dict[tuple[str, str], ClipBundle | GroundingBundle] = {}
        self.load_seconds: dict[str, float] = {}  # role -> seconds spent loading it (a run records its share)
        self.measurements = ShapeMeasurements()

    def describe(self) -> str:
        return self.source if self.source in ("tiny", "default") else os.path.abspath(self.source)

    def record(self) -> dict[str, object]:
        """What each model loaded so far came from, for a run record: ``{"clip": {"repo_id": ...,
        "revision": ...}}`` for hub models, ``"tiny"`` or ``"folder"`` (:meth:`describe` names it) else."""
        used = [role for role in ROLES if any(key[0] == role for key in self._loaded)]
        if self.source != "default":
            return dict.fromkeys(used, "tiny" if self.source == "tiny" else "folder")
        sources = {source.role: source for source in MODEL_SOURCES}
        return {role: {"repo_id": sources[role].repo_id, "revision": sources[role].revision} for role in used}

    def footprint(self) -> ModelFootprint:
        """What this source's models take in memory (engine/footprint.py), read without loading them."""
        return model_footprint(self.source)

    def loaded_roles(self, device: torch.device | str) -> tuple[str, ...]:
        """The roles whose models this store holds on ``device`` already."""
        return tuple(role for role, where in self._loaded if where == str(device))

    def clip(self, device: torch.device | str = "cpu") -> ClipBundle:
        """The CLIP model of this source, frozen, on ``device``."""
        return self._cached("clip", device, self._load_clip)

    def grounding(self, device: torch.device | str = "cpu") -> GroundingBundle:
        """The Grounding DINO model of this source, frozen, on ``device``."""
        return self._cached("grounding", device, self._load_grounding)

    def segmenter(self, device: torch.device | str = "cpu") -> SegmenterBundle:
        """The box-prompted segmenter of this source, frozen, on ``device``."""
        return self._cached("segmenter", device, self._load_segmenter)

    def _cached(self, role: str, device: torch.device | str, load):
        """Load a role's bundle once per device, as :func:`frozen_on_device` prepares it."""
        key = (role, str(device))
        if key not in self._loaded:
            started = time.perf_counter()
            bundle = load()
            model = frozen_on_device(bundle.model, device, role, device_kernels=self.device_kernels)
            self._loaded[key] = dataclasses.replace(bundle, model=model)
            self.load_seconds[role] = self.load_seconds.get(role, 0.0) + time.perf_counter() - started
        return self._loaded[key]

    @property
    def seconds_loading(self) -> float:
        """Seconds spent loading models so far, every role and device."""
        return sum(self.load_seconds.values())

    def _load_clip(self) -> ClipBundle:
        if self.source == "tiny":
            if os.path.isfile(os.path.join(TINY_CLIP_FOLDER, "model.safetensors")):
                return load_clip_folder(TINY_CLIP_FOLDER, name="tiny")
            from .tiny_models import build_tiny_clip

            model, tokenizer = build_tiny_clip()
            return ClipBundle(model, tokenizer, model.config.vision_config.image_size, CLIP_MEAN, CLIP_STD, "tiny")
        folder = self.resolve(DEFAULT_CLIP, role="clip")
        return load_clip_folder(folder, name=DEFAULT_CLIP if self.source == "default" else folder)

    def _load_grounding(self) -> GroundingBundle:
        require_grounding_support()
        if self.source == "tiny":
            if os.path.isfile(os.path.join(TINY_GROUNDING_FOLDER, "model.safetensors")):
                return load_grounding_folder(TINY_GROUNDING_FOLDER, name="tiny")
            from .tiny_models import build_tiny_grounding_dino

            model, tokenizer = build_tiny_grounding_dino()
            return GroundingBundle(
                model, tokenizer, TINY_GROUNDING_SIZE, TINY_GROUNDING_MAX_SIZE, GROUNDING_MEAN, GROUNDING_STD, "tiny"
            )
        folder = self.resolve(DEFAULT_GROUNDING, role="grounding")
        return load_grounding_folder(folder, name=DEFAULT_GROUNDING if self.source == "default" else folder)

    def _load_segmenter(self) -> SegmenterBundle:
        if self.source == "tiny":
            if os.path.isfile(os.path.join(TINY_SEGMENTER_FOLDER, "model.safetensors")):
                return load_segmenter_folder(TINY_SEGMENTER_FOLDER, name="tiny")
            from .tiny_models import build_tiny_segmenter

            model = build_tiny_segmenter(image_size=TINY_SEGMENTER_SIZE)
            return SegmenterBundle(model, TINY_SEGMENTER_SIZE, GROUNDING_MEAN, GROUNDING_STD, "tiny")
        folder = self.resolve(DEFAULT_SEGMENTER, role="segmenter")
        return load_segmenter_folder(folder, name=DEFAULT_SEGMENTER if self.source == "default" else folder)

    def resolve(self, model_id: str, *, role: str) -> str:
        """A local folder holding ``model_id`` (for ``default``) or the ``role`` model of a folder source."""
        if self.source == "default":
            return hub_folder(model_id, allow_download=self.allow_download, cache_dir=self.cache_dir)
        if self.source == "tiny":
            raise ValueError("tiny models are built in code, not resolved to folders")
        root = os.path.abspath(self.source)
        if not os.path.isdir(root):
            raise ModelNotFound(
                f"model folder '{root}' does not exist; pass --models tiny, --models default, "
                "or the path of a folder that holds the models."
            )
        if (folder := role_folder(root, role)) is not None:
            return folder
        raise ModelNotFound(
            f"no {role} model in '{root}': expected '{os.path.join(root, role)}' (or the folder itself) "
            "to hold config.json and model.safetensors."
        )


def hub_folder(model_id: str, *, allow_download: bool, cache_dir: str | None = None) -> str:
    """The local snapshot folder of a hub model at its pinned revision; downloads it only when
    ``allow_download`` (without progress: callers that show one use :func:`engine.downloads.download_models`)."""
    source = source_for(model_id)
    folder = local_snapshot(source, cache_dir)
    if folder:
        return folder
    if not allow_download:
        raise ModelNotFound(
            f"model '{model_id}' (revision {source.revision[:8]}) is not on this machine and downloading is not "
            f"allowed; fetch it with `{FETCH_COMMAND}` (needs network, {format_size(source.size_bytes)}), "
            "or use --models tiny to run offline."
        )
    return download_models([source], cache_dir=cache_dir)[0]


def load_clip_folder(folder: str, *, name: str) -> ClipBundle:
    """Load a CLIP model folder (safetensors only) with its tokenizer and normalization."""
    from transformers import CLIPModel, CLIPTokenizer

    require_safetensors(folder)
    with _model_folder(folder, "CLIP"):
        model = _from_pretrained(CLIPModel, folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        cfg = _processor_config(folder)
    mean, std = CLIP_MEAN, CLIP_STD
    if cfg:
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
    return ClipBundle(model.eval(), tokenizer, model.config.vision_config.image_size, mean, std, name)


def load_grounding_folder(folder: str, *, name: str) -> GroundingBundle:
    """Load a Grounding DINO model folder (safetensors only) with its tokenizer and preprocessing.

    The processor settings (``size``, ``image_mean``, ``image_std``) come from the folder's
    ``preprocessor_config.json`` where it has one, else the library's defaults (800 / 1333, ImageNet).
    """
    from transformers import BertTokenizer, GroundingDinoForObjectDetection

    require_safetensors(folder)
    with _model_folder(folder, "Grounding DINO"):
        model = _from_pretrained(GroundingDinoForObjectDetection, folder)
        tokenizer = BertTokenizer.from_pretrained(folder, local_files_only=True)
        cfg = _processor_config(folder)
    size, max_size, mean, std = GROUNDING_SIZE, GROUNDING_MAX_SIZE, GROUNDING_MEAN, GROUNDING_STD
    if cfg:
        sizes = cfg.get("size") or {}
        size = int(sizes.get("shortest_edge", size))
        max_size = int(sizes.get("longest_edge", max_size))
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
    # The model splits captions at fixed token ids ([CLS], [SEP], ".", "?" of bert-base-uncased);
    # a tokenizer that gives these tokens other ids would silently break every phrase.
    ids = tuple(tokenizer.convert_tokens_to_ids(list(GROUNDING_DELIMITER_IDS)))
    expected = grounding_delimiter_ids(model)
    if ids != expected:
        raise ModelFormatError(
            f"the tokenizer in '{folder}' gives {list(GROUNDING_DELIMITER_IDS)} the ids {list(ids)}, but the "
            f"model splits phrases at {list(expected)}; use the tokenizer that belongs to the model."
        )
    return GroundingBundle(model.eval(), tokenizer, size, max_size, mean, std, name)


# The box-promptable segmenter classes by config ``model_type``.
SEGMENTER_CLASSES = {"sam2": "Sam2Model", "edgetam": "EdgeTamModel"}


def load_segmenter_folder(folder: str, *, name: str) -> SegmenterBundle:
    """Load a SAM 2 or EdgeTAM model folder (safetensors only) with its preprocessing.

    ``preprocessor_config.json`` gives the input size (``size.height``) and normalization where the
    folder has one, else SAM 2's (1024 px, ImageNet).
    """
    import transformers

    require_safetensors(folder)
    with _model_folder(folder, "SAM 2 / EdgeTAM"):
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            model_type = json.load(fh).get("model_type")
        if model_type not in SEGMENTER_CLASSES:
            raise ModelFormatError(
                f"'{folder}' holds a {model_type!r} model; the segmenter must be one of "
                f"{', '.join(SEGMENTER_CLASSES)} (SAM 2 or EdgeTAM in transformers' format)."
            )
        model = _from_pretrained(getattr(transformers, SEGMENTER_CLASSES[model_type]), folder)
        cfg = _processor_config(folder)
    size = int((cfg.get("size") or {}).get("height", SEGMENTER_SIZE))
    mean = tuple(cfg.get("image_mean", GROUNDING_MEAN))
    std = tuple(cfg.get("image_std", GROUNDING_STD))
    return SegmenterBundle(model.eval(), size, mean, std, name)


@contextlib.contextmanager
def _model_folder(folder: str, kind: str):
    """Turn whatever the library raises for an unloadable folder into :class:`ModelFormatError`.

    transformers, tokenizers and safetensors raise many types (OSError, ValueError, JSON and
    safetensors errors) for a folder that is not a model of ``kind``; the user needs one answer.
    """
    try:
        yield
    except ModelFormatError:
        raise
    except Exception as exc:
        raise ModelFormatError(
            f"'{folder}' does not hold a loadable {kind} model ({type(exc).__name__}: {exc}). Give a folder saved "
            "with save_pretrained (config.json, model.safetensors and the tokenizer files), or --models tiny."
        ) from exc


def _from_pretrained(model_class, folder: str):
    """``model_class`` from ``folder``'s safetensors, refused unless every weight matched the config.

    A config and weights of different models load with everything "newly initialized": a randomly
    initialized model that runs and gives meaningless results. Only the buffers a model rebuilds
    from its config (:data:`REBUILT_BUFFERS`) may be absent.
    """
    model, info = model_class.from_pretrained(folder, use_safetensors=True, local_files_only=True,
                                              output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith(REBUILT_BUFFERS)]
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.endswith(REBUILT_BUFFERS)]
    if missing or unexpected or info.get("mismatched_keys"):
        found = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(info['mismatched_keys'])} of another shape" if info.get("mismatched_keys") else ""]
        raise ModelFormatError(
            f"the weights in '{folder}' do not belong to its config.json ({model_class.__name__}): weights "
            f"{', '.join(f for f in found if f)}. The config and model.safetensors come from different models; "
            "save the model again with save_pretrained, or use --models tiny."
        )
    return model


def _processor_config(folder: str) -> dict:
    """The folder's preprocessor_config.json as a dict ({} where it has none)."""
    path = os.path.join(folder, "preprocessor_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return cfg


def require_safetensors(folder: str) -> None:
    """Raise :class:`ModelFormatError` unless ``folder`` holds safetensors weights."""
    names = os.listdir(folder)
    if any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        return
    pickled = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = (
        f" It holds {', '.join(pickled)}: pickled weights are refused because loading them can run code; "
        "convert them to safetensors first."
        if pickled
        else ""
    )
    raise ModelFormatError(f"'{folder}' holds no .safetensors weights.{hint}")


def fetch_models(source: str = "default", *, cache_dir: str | None = None, on_progress=None, cancel=None) -> list[str]:
    """Download the real models into the Hugging Face cache (what is missing of them); returns their
    local folders. ``on_progress`` and ``cancel`` as for :func:`engine.downloads.download_models`."""
    from . import downloads

    if source != "default":
        raise ModelNotFound("only --models default can be fetched; tiny models are built in, folders are yours.")
    return downloads.download_models(MODEL_SOURCES, cache_dir=cache_dir, on_progress=on_progress, cancel=cancel)
