"""``ray job submit -- python jobs/evaluate.py --run DIR``: same as ``facray evaluate``."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
