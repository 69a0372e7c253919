"""``ray job submit -- python jobs/data_synth.py --out DIR``: same as ``facray data synth``."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "synth", *sys.argv[1:]]))
