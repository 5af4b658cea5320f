"""Run the raysv demo pipeline as a Ray job.

    ray job submit --working-dir . -- python jobs/demo.py --out /mnt/runs/demo
    ray job submit --working-dir . -- python jobs/demo.py --data /mnt/corpus --out /mnt/runs/demo

Locally (`python jobs/demo.py`) it starts its own Ray. Arguments are those of
`raysv demo` (see `raysv demo --help`).
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
