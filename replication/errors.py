"""The errors a user can cause (bad config, data, paths, results): reported as one line, exit 2."""

import sys

from replication.compare import ResultsError
from replication.config import ConfigError
from replication.data import DataError
from replication.storage import StorageError
from replication.train import RunError

EXPECTED = (ConfigError, DataError, StorageError, RunError, ResultsError)

OUT_OF_MEMORY_FIX = ("the evaluation batch does not fit: lower eval_batch_size (e.g. --set "
                     "eval_batch_size=1000; under batch_statistics this changes the batch-norm "
                     "statistics, and results record it) or free the device")


def is_out_of_memory(err: BaseException) -> bool:
    """A TensorFlow out-of-memory error (ResourceExhaustedError), without importing TensorFlow."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(err, tf.errors.ResourceExhaustedError)
