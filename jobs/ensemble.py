"""``ray job submit -- python jobs/ensemble.py RUN_OR_MODEL... --out DIR``: same as ``facray ensemble``."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ensemble", *sys.argv[1:]]))
