"""The errors a user can cause. The CLI prints these as one line (no traceback) and exits with status 2."""

from tinyseg.config import ConfigError
from tinyseg.data.io import DatasetError


def user_errors() -> tuple[type[Exception], ...]:
    """Imported lazily: the edge install has no torch, so torch-side modules may be missing."""
    errors: list[type[Exception]] = [ConfigError, DatasetError, FileNotFoundError]
    from tinyseg.cli import UsageError
    from tinyseg.runtime import RuntimeError_
    from tinyseg.video import VideoError

    errors += [UsageError, RuntimeError_, VideoError]
    try:
        from tinyseg.export import ExportError
        from tinyseg.predict import CheckpointError
        from tinyseg.train import TrainingError

        errors += [CheckpointError, TrainingError, ExportError]
    except ImportError:  # no torch: only the runtime's errors can happen
        pass
    return tuple(errors)
