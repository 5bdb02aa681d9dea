"""The errors of a run's folder, files and checkpoints: each is one line for the user, never a traceback."""


class RunError(ValueError):
    """A run folder that is missing, incomplete or written by an incompatible version."""


class CheckpointError(ValueError):
    """A checkpoint that is unreadable or belongs to another model."""


class WriteError(RunError):
    """A run file could not be written (disk full, read-only, no permission); its previous version is intact."""


class AssetError(ValueError):
    """An asset of the shipped example that is missing, altered, or made for other settings; the message names the file and the fix."""
