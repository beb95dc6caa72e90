"""Benchmark of frame-by-frame streaming (see mambava.benchmarks.stream); same as `mambava bench stream`."""

import sys

from mambava.benchmarks.stream import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
