import sys

from towerlite.cli import main

sys.exit(main(["distill", *sys.argv[1:]]))
