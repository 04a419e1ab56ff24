"""The errors a user can cause. Every one is a `TinysegError`: the CLI prints it as one line naming the file
and the problem (no traceback) and exits with status 2. A leaf module: it imports nothing from tinyseg."""


class TinysegError(Exception):
    """Base of every error a user can cause and fix."""


class ConfigError(TinysegError, ValueError):
    """A configuration a user wrote is wrong (unknown key, wrong type, value out of range, bad preset)."""


class DataError(TinysegError, ValueError):
    """A dataset or image file is missing or malformed; the message names the file and the problem."""


class CheckpointError(TinysegError, ValueError):
    """A checkpoint file is missing, corrupt or from another version."""


class TrainingError(TinysegError, RuntimeError):
    """A training run cannot start or continue (no training state to resume, a non-finite loss, no CUDA)."""


class ExportError(TinysegError, RuntimeError):
    """A model cannot be exported as asked, or the export does not match PyTorch."""


class EdgeRuntimeError(TinysegError, RuntimeError):
    """A deployed model cannot be loaded or run; the message says why and what to do."""


class VideoError(TinysegError, ValueError):
    """A video or camera that cannot be opened, or a window that cannot be shown."""


class UsageError(TinysegError, ValueError):
    """A combination of options that cannot work; the message says what to do instead."""


class DataWarning(UserWarning):
    """Something in a dataset was skipped or fixed; the message says what."""


# The names these had before the errors moved here.
DatasetError = DataError
DatasetWarning = DataWarning
