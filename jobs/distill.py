"""``ray job submit -- python jobs/distill.py --teacher PREDICTOR --prepared DIR --out RUN``: same as ``facray distill``."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
