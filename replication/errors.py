"""The errors a user can cause (bad config, data, paths, arguments, result files).

Each stage's error class derives from `UserError`, and the CLI (replication/__main__.py) prints
any of them as one line and exits with status 2: a new stage's error needs no list to join.
This module is the ground floor: it imports nothing of the package.
"""


class UserError(Exception):
    """A problem the user can fix; its message names the problem and the fix, in one line."""


OUT_OF_MEMORY_FIX = ("the evaluation batch does not fit: lower eval_batch_size (e.g. --set "
                     "eval_batch_size=1000; under batch_statistics this changes the batch-norm "
                     "statistics, and results record it) or free the device")
