"""Regenerate the Python stubs of inference.proto (checked in beside it): `python -m service.grpc.generate`.

grpcio-tools (the dev extra) writes inference_pb2.py, inference_pb2.pyi and inference_pb2_grpc.py;
the serving image needs only grpcio and protobuf. tests/test_grpc.py regenerates into a temporary
folder and compares, so a stale stub cannot be committed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("service/grpc/inference.proto")  # relative to ROOT: the stubs import each other as service.grpc.*
STUBS = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def generate(out: Path = ROOT) -> list[Path]:
    """Write the stubs under `out` (at service/grpc/, as in the project) and return their paths.

    protoc (grpcio-tools, the dev extra) runs in its own process: called in a process that has
    already loaded protobuf's upb module (any test process that imported the stubs) it segfaulted.
    """
    (out / PROTO.parent).mkdir(parents=True, exist_ok=True)
    args = [f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", str(PROTO)]
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed ({done.returncode}): {' '.join(args)}\n{done.stderr}")
    return [out / PROTO.parent / name for name in STUBS]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)
