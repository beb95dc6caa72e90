"""Faces stage frames/s: decode only vs. decode + detect + track + align (see mambava.benchmarks.faces)."""

from mambava.benchmarks.faces import main

if __name__ == "__main__":
    main()
