"""`python -m towerlite.distill` (also under torchrun): the same command as `towerlite distill`."""

import sys

from towerlite.entry import standalone

from .cli import DESCRIPTION, add_arguments, command

sys.exit(standalone("python -m towerlite.distill", DESCRIPTION, add_arguments, command))
