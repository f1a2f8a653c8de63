"""`python -m towerlite.export.benchmark`: the same command as `towerlite bench encoders`."""

import sys

from towerlite.entry import standalone

from .run import DESCRIPTION, add_arguments, command

sys.exit(standalone("python -m towerlite.export.benchmark", DESCRIPTION, add_arguments, command))
