"""Generate a speaker corpus folder as a Ray job (runs on the head node's CPUs).

    ray job submit --working-dir . -- python jobs/synth.py --config configs/synth_large.yaml --out /mnt/corpus

Arguments are those of `raysv synth`.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
