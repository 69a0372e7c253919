"""``ray job submit -- python jobs/data_check.py ROOT``: same as ``facray data check ROOT``."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "check", *sys.argv[1:]]))
