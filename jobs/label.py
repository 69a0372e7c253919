"""``ray job submit --working-dir . -- python jobs/label.py --images DIR --model URI --out labels.csv``:
same as ``facray label`` (``--smoke-test`` labels a few generated faces with an untrained model)."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]]))
