"""The errors a user can cause (bad config, data, paths, results): reported as one line, exit 2."""

from replication.compare import ResultsError
from replication.config import ConfigError
from replication.data import DataError
from replication.storage import StorageError
from replication.train import RunError

EXPECTED = (ConfigError, DataError, StorageError, RunError, ResultsError)
