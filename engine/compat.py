"""The one module that touches library details outside their documented, stable API.

Every shim says which library versions it covers and what it falls back to, so a new release that
moves a detail breaks here, in one place, with a test (tests/test_compat.py) naming it. The
versions the project supports are pyproject.toml's; the test command runs the suite with the
newest versions the resolver picks and with the lowest declared ones (``build.py test``).

Shims and version checks:
- :func:`require_grounding_support`: transformers 5.0 to 5.22 give Grounding DINO's phrase
  delimiters (``.`` and ``[SEP]``) position id 0 instead of their place in the phrase (fixed in
  5.23). A model trained with one rule scores phrases differently under the other: on the same
  image the shipped tiny detector's phrase logits differ by up to 5.6 (of 10) between 5.22 and
  5.23. The engine therefore needs transformers >= 5.23 for grounding, and says so.
- :func:`grounding_delimiter_ids`: the token ids at which Grounding DINO splits a caption into
  phrases. transformers 5.23 and later keep them on the model (a non-persistent buffer
  ``model.model.special_tokens``); 5.0 to 5.22 have only the module constant ``SPECIAL_TOKENS``
  of ``modeling_grounding_dino`` (the same four ids of bert-base-uncased).
- :func:`check_caption_batch`: transformers 5.x's Grounding DINO loss
  (``GroundingDinoImageLoss._get_target_classes_one_hot``) offsets each image's phrase indices by
  that image's own phrase count rather than the running total, so a training batch is labelled
  correctly only when every image has the same caption (checked with 5.0 and 5.24).
- :func:`skip_tensor_checks`: transformers 5.x's ``torch_compilable_check`` asserts a condition on
  tensors inside model forwards; where the condition is a tensor on a GPU, reading it makes the host
  wait for the GPU. Of the models the engine runs only Grounding DINO has one: each multi-scale
  deformable attention layer checks that its levels' shapes add up to its sequence length, 12 waits
  of a grounding step (6 encoder layers, 2 captions) for a fact the engine's inputs hold by
  construction. transformers 5.23 and 5.24 skip every such check while
  ``TRANSFORMERS_DISABLE_TORCH_CHECK`` is ``1`` (read at each check; documented there for production
  use), so ``python -m engine`` sets it unless the user set it; the tests run with the checks on.
- :func:`plain_http_downloads`: huggingface_hub 1.31 to 2.4 download a file over plain HTTP in
  ``file_download.http_get``, which calls the ``tqdm_class`` bar's ``update`` inline in its read loop
  (an exception raised there stops that download and removes its temporary file), in chunks of
  ``constants.DOWNLOAD_CHUNK_SIZE`` (10 MB: a bar would move every few seconds on a slow line). With
  ``hf_xet`` installed they use Xet instead, whose progress callback runs on hf_xet's own thread and
  swallows exceptions (huggingface_hub issue 4632), so a cancel could not stop it. The shim switches
  Xet off (``constants.HF_HUB_DISABLE_XET``, read at call time by ``is_xet_available``) and sets 1 MB
  chunks for the duration of the engine's own downloads, then restores both.
"""

from __future__ import annotations

import contextlib
import os
import threading

from .errors import DependencyError

#: The first transformers release whose Grounding DINO gives phrase delimiters the right position ids.
GROUNDING_MIN_TRANSFORMERS = "5.23"

#: transformers' switch for its in-forward tensor checks (see :func:`skip_tensor_checks`).
TENSOR_CHECKS_VARIABLE = "TRANSFORMERS_DISABLE_TORCH_CHECK"

#: The tokens Grounding DINO treats as phrase delimiters -> their ids in bert-base-uncased's
#: vocabulary (the tiny tokenizers keep that layout). transformers 5.0-5.24 split at these ids.
GROUNDING_DELIMITER_IDS: dict[str, int] = {"[CLS]": 101, "[SEP]": 102, ".": 1012, "?": 1029}


def require_grounding_support(version: str | None = None) -> None:
    """Raise :class:`DependencyError` when transformers (``version``, default: the installed one) is
    older than :data:`GROUNDING_MIN_TRANSFORMERS` (see the module docstring)."""
    from packaging.version import Version

    if version is None:
        import transformers

        version = transformers.__version__
    if Version(version) < Version(GROUNDING_MIN_TRANSFORMERS):
        raise DependencyError(
            f"transformers {version} gives Grounding DINO's phrase delimiters the wrong position ids (fixed in "
            f"{GROUNDING_MIN_TRANSFORMERS}), so the part detector would not score parts as it was trained to. "
            f"Update it: pip install -U \"transformers>={GROUNDING_MIN_TRANSFORMERS},<6\" (or give the parts by "
            "hand, which needs no detector)."
        )


def skip_tensor_checks() -> bool:
    """Set ``TRANSFORMERS_DISABLE_TORCH_CHECK=1`` unless the user set it (their value is kept): the
    engine's own processes skip transformers' in-forward tensor checks, each a wait for the GPU (see
    the module docstring). Returns whether the checks are now skipped."""
    os.environ.setdefault(TENSOR_CHECKS_VARIABLE, "1")
    return os.environ[TENSOR_CHECKS_VARIABLE] == "1"


def grounding_delimiter_ids(model) -> tuple[int, ...]:
    """The token ids at which ``model`` (a ``GroundingDinoForObjectDetection``) splits captions.

    Read from the model where the library keeps them there (transformers >= 5.23: the buffer
    ``model.model.special_tokens``), else from the library's module constant (5.0 - 5.22), else the
    project's own table :data:`GROUNDING_DELIMITER_IDS`. Ordered as that table.
    """
    inner = getattr(model, "model", model)
    buffer = getattr(inner, "special_tokens", None)
    if buffer is not None:
        return tuple(int(i) for i in buffer.tolist())
    try:
        from transformers.models.grounding_dino import modeling_grounding_dino
    except ImportError:  # the library moved the module: fall back to the table it has always used
        return tuple(GROUNDING_DELIMITER_IDS.values())
    ids = getattr(modeling_grounding_dino, "SPECIAL_TOKENS", GROUNDING_DELIMITER_IDS.values())
    return tuple(int(i) for i in ids)


def check_caption_batch(captions) -> None:
    """Refuse a training batch whose images do not share one caption (see the module docstring).

    Raises ValueError: the library's loss would silently train those images on the wrong phrases.
    """
    if len(set(captions)) > 1:
        raise ValueError(
            "the samples of a batch must share one caption: transformers 5.x's Grounding DINO loss offsets each "
            "image's phrase indices by that image's own phrase count, which mislabels batches of mixed captions"
        )


#: The chunk size the engine's downloads read in (bytes): progress and cancel act at least this often.
DOWNLOAD_CHUNK_BYTES = 1 << 20
_download_settings = threading.Lock()


@contextlib.contextmanager
def plain_http_downloads(chunk_bytes: int = DOWNLOAD_CHUNK_BYTES):
    """huggingface_hub downloads over plain HTTP in ``chunk_bytes`` chunks inside the block (see the
    module docstring); process-wide while it lasts, so one such block runs at a time."""
    from huggingface_hub import constants

    with _download_settings:
        saved = constants.HF_HUB_DISABLE_XET, constants.DOWNLOAD_CHUNK_SIZE
        constants.HF_HUB_DISABLE_XET, constants.DOWNLOAD_CHUNK_SIZE = True, int(chunk_bytes)
        try:
            yield
        finally:
            constants.HF_HUB_DISABLE_XET, constants.DOWNLOAD_CHUNK_SIZE = saved
