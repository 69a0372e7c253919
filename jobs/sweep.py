"""``ray job submit -- python jobs/sweep.py --space tune_spaces/multitask_lr_wd.py --out DIR prepared=DIR``:
same as ``facray sweep`` (``--smoke-test`` for a 4-trial sweep on generated data)."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
