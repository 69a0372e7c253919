"""``ray job submit -- python jobs/train_binary.py --prepared DIR --out DIR``: same as
``facray train-binary`` (``--smoke-test`` for a seconds-long run on generated data)."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-binary", *sys.argv[1:]]))
