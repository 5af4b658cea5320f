"""HTML report of an iterate or demo run as a Ray job (it only reads the run folder).

ray job submit --working-dir . -- python jobs/report.py /mnt/runs/stage2
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
