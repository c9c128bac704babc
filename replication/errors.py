"""The errors a user can cause (bad config, data, paths, results): reported as one line, exit 2."""

from replication import backend
from replication.config import ConfigError
from replication.data import DataError
from replication.analysis.results import ResultsError
from replication.analysis.rerun import DiffError
from replication.storage import StorageError
from replication.train import RunError

EXPECTED = (ConfigError, DataError, StorageError, RunError, ResultsError, DiffError,
            backend.BackendError)

OUT_OF_MEMORY_FIX = ("the evaluation batch does not fit: lower eval_batch_size (e.g. --set "
                     "eval_batch_size=1000; under batch_statistics this changes the batch-norm "
                     "statistics, and results record it) or free the device")
