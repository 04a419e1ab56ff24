"""The errors a user can cause. The CLI prints these as one line (no traceback) and exits with status 2."""

from tinyseg.config import ConfigError
from tinyseg.data.coco import DatasetError
from tinyseg.predict import CheckpointError
from tinyseg.train import TrainingError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, TrainingError, FileNotFoundError)
