"""Benchmark of the temporal model (see mambava.benchmarks.temporal); same as `mambava bench temporal`."""

import sys

from mambava.benchmarks.temporal import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
