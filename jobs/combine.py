"""``ray job submit -- python jobs/combine.py --run DIR``: same as ``facray combine``."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["combine", *sys.argv[1:]]))
