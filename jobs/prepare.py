"""``ray job submit -- python jobs/prepare.py --dataset celeba --root DIR --out DIR``: same as
``facray prepare`` (``--smoke-test`` for a seconds-long run on generated data)."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
