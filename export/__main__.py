import sys

from towerlite.cli import main

sys.exit(main(["export", *sys.argv[1:]]))
