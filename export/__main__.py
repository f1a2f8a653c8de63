"""`python -m towerlite.export`: the same command as `towerlite export`."""

import sys

from towerlite.entry import standalone

from .cli import DESCRIPTION, add_arguments, command

sys.exit(standalone("python -m towerlite.export", DESCRIPTION, add_arguments, command))
