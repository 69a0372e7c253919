"""``ray job submit -- python jobs/check_nodes.py``: same as ``facray check-nodes`` (every live
node has facray's requirements, and CUDA where it declares GPUs; ``--smoke-test`` checks this
machine with a local Ray)."""
import sys

from facray.cli import main

if __name__ == "__main__":
    sys.exit(main(["check-nodes", *sys.argv[1:]]))
