"""``ray job submit -- python jobs/train.py --model resnet18 --prepared DIR --out DIR``: same as
``facray train`` (``--smoke-test`` for a seconds-long run on generated data)."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
