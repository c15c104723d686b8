#!/usr/bin/env bash
# Stage everything `python -m benchmarks.gpu` needs on the GPU device machine (Python 3.12,
# no network, at most 64 MiB of working tree per call) and print the device calls.
#
#   bash deploy/stage-gpu-check.sh            # from the project root
#
# It puts under .gpu/ (git-ignored): onnxruntime-gpu in parts (../shared/tools/stage-ort-gpu.sh),
# the cp312 wheels of the serving stack in parts, hey (the load generator), and 256 real
# JPEGs from ../shared/data for the parity and load checks.
set -euo pipefail
root="$(git rev-parse --show-toplevel)"
cd "$root"
shared="$root/../shared"
mkdir -p .gpu && bash "$shared/tools/stage-ort-gpu.sh" > .gpu/ort-calls.txt
mkdir -p .gpu/wheels .gpu/bin .gpu/photos
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .gpu/wheels bentoml==1.4.39 uvloop==0.23.0 httptools==0.9.0 pillow==13.0.0 numpy==2.4.6 psutil==7.2.2 \
  httpx==0.28.1 matplotlib==3.11.2
tar -C .gpu -cf .gpu/wheels.tar wheels
rm -f .gpu/wheels.part.* && split -b 40M -d .gpu/wheels.tar .gpu/wheels.part.
cp "$(command -v hey)" .gpu/bin/hey
find "$shared/data/cats_vs_dogs_small/test" -name '*.jpg' | sort | head -256 | xargs -I{} cp {} .gpu/photos/
ort="$(basename "$(ls .gpu/wheel/onnxruntime_gpu-*.whl)")"
echo "staged: $(ls .gpu/part.* | wc -l) onnxruntime-gpu parts, $(ls .gpu/wheels.part.* | wc -l) wheel parts, hey, $(ls .gpu/photos | wc -l) photos"
echo
echo "Device calls (run tool), back to back while the machine stays warm:"
for p in .gpu/part.* .gpu/wheels.part.*; do
  echo "  carry [\"$p\"], command: mkdir -p /tmp/parts && cp $p /tmp/parts/"
done
cat <<EOF
  carry [".gpu/bin", ".gpu/photos"], timeout_s 540, command:
    cat /tmp/parts/part.* > /tmp/$ort && cat /tmp/parts/wheels.part.* | tar -C /tmp -xf - \
    && python3 -m pip install -q --no-index --find-links /tmp/wheels --target /tmp/site /tmp/$ort bentoml==1.4.39 \
       uvloop==0.23.0 httptools==0.9.0 psutil==7.2.2 httpx==0.28.1 matplotlib==3.11.2 \
    && PATH=\$PWD/.gpu/bin:/tmp/site/bin:\$PATH PYTHONPATH=/tmp/site:\$PWD \
       python3 -m benchmarks.gpu --photos .gpu/photos; cp benchmarks/results/gpu.* \$OUT/
EOF
