"""The Hugging Face hub side of the model downloads: :class:`HubTransport`, the default transport of
:func:`engine.downloads.download_models`, and what the hub's and the network's errors mean to a user.

huggingface_hub is imported only when the hub is used, so this module loads without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .downloads import ModelSource


class HubTransport:
    """The Hugging Face hub through huggingface_hub's public functions (``model_info`` with
    ``files_metadata``, ``hf_hub_download`` with a ``tqdm_class``), always at the pinned revision.

    ``endpoint``: another hub or mirror (default: huggingface_hub's, i.e. ``HF_ENDPOINT``).
    """

    def __init__(self, endpoint: str | None = None):
        self.endpoint = endpoint

    def list_files(self, source: ModelSource) -> dict[str, int]:
        from huggingface_hub import HfApi

        info = HfApi(endpoint=self.endpoint).model_info(source.repo_id, revision=source.revision, files_metadata=True)
        return {s.rfilename: int(s.size or 0) for s in info.siblings or () if source.wants(s.rfilename)}

    def fetch(self, source: ModelSource, filename: str, *, cache_dir: str, on_bytes: Callable[[int], None]) -> str:
        from huggingface_hub import hf_hub_download

        from .compat import plain_http_downloads

        with plain_http_downloads():
            return hf_hub_download(source.repo_id, filename, revision=source.revision, cache_dir=cache_dir,
                                   endpoint=self.endpoint, tqdm_class=_forwarding_bar(on_bytes))


def _forwarding_bar(on_bytes: Callable[[int], None]):
    """A tqdm class that shows nothing and hands every byte count to ``on_bytes``."""
    from tqdm import tqdm

    class ForwardingBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            if kwargs.get("initial"):
                on_bytes(int(kwargs["initial"]))

        def update(self, n=1):
            on_bytes(int(n or 0))

    return ForwardingBar


def failure_message(exc: BaseException, what: str) -> str:
    """What went wrong and what to do, for an error a download of ``what`` (a model and revision) raised:
    downloads switched off, a repository or revision the hub no longer serves, a refusal, or no connection."""
    kinds = _kinds(exc)
    if "OfflineModeIsEnabled" in kinds:
        return (
            f"cannot download {what}: Hugging Face downloads are switched off in this process (HF_HUB_OFFLINE). "
            "Allow online access (unset HF_HUB_OFFLINE; in Blender, Preferences > System > Allow Online Access), "
            "or use --models tiny."
        )
    if "LocalEntryNotFoundError" not in kinds and kinds & {
            "RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError", "GatedRepoError"}:
        return (
            f"the hub does not serve {what}: {type(exc).__name__}: {_first_line(exc)}. The pinned model may have "
            "moved; use --models tiny, or download it yourself and pass its folder with --models FOLDER."
        )
    if "HfHubHTTPError" in kinds:
        return f"the Hugging Face hub refused {what} ({_first_line(exc)}); try again later, or use --models tiny."
    return (
        f"could not download {what}: the Hugging Face hub (huggingface.co) cannot be reached "
        f"({type(exc).__name__}: {_first_line(exc)}). Check the network connection and allow online access "
        "(a proxy needs HTTPS_PROXY), or use --models tiny to run offline."
    )


def _kinds(exc: BaseException) -> set[str]:
    """The class names of ``exc`` and of the errors it was raised from (the hub wraps the offline error)."""
    names: set[str] = set()
    seen = 0
    while exc is not None and seen < 8:
        names.update(cls.__name__ for cls in type(exc).__mro__)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return names


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
