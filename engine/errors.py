"""The engine's one error hierarchy.

Every error the engine raises on purpose derives from :class:`PartstyleError`, and its message
says what was wrong and what to do about it, so the command line and the Blender add-on can show
it to the user as it is.
"""

from __future__ import annotations


class PartstyleError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(PartstyleError):
    """An input the user gave cannot be used: an unreadable or malformed file (``parts.npz``,
    ``result.npz``), arrays of the wrong shape, type or range, or data made for another mesh."""


class MeshError(InputError):
    """The mesh cannot be used: unreadable file, empty, non-finite coordinates, bad indices."""


class PromptError(PartstyleError):
    """The text prompt cannot be parsed or is empty."""


class PartNotFound(PartstyleError):
    """A part of the prompt cannot be located on the mesh, or is not among the given parts.

    Not for files that cannot be read (that is :class:`InputError`)."""


class SettingsError(PartstyleError):
    """An unknown setting, a value of the wrong type, or an unknown preset."""


class ModelNotFound(PartstyleError):
    """A model is not available locally and downloading is not allowed (or failed)."""


class DownloadError(ModelNotFound):
    """Downloading a model failed: the hub cannot be reached or refuses, downloads are switched off, or the
    disk is full. The message names the problem and the fix; files finished before it are kept."""


class ModelFormatError(PartstyleError):
    """A model folder exists but holds no loadable safetensors weights or config."""


class OutputError(PartstyleError):
    """Results cannot be written where asked: not a folder, not writable, or the disk is full. Earlier
    results there are left as they were."""


class ResourceError(PartstyleError):
    """The run would need more memory than the device has free."""


class DependencyError(PartstyleError):
    """An installed library is a version the engine does not support for the work asked of it."""


class DeviceError(PartstyleError):
    """The requested compute device does not exist on this machine."""


class CheckpointError(PartstyleError):
    """A checkpoint cannot be resumed: missing, corrupt, or from a different run."""


class NumericalError(PartstyleError):
    """Optimization produced non-finite values repeatedly, even after restoring a good state."""


class Cancelled(PartstyleError):
    """The run was cancelled by the user. ``checkpoint`` names the resumable state, if any."""

    def __init__(self, message: str = "cancelled", checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint
