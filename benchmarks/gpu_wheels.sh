#!/usr/bin/env bash
# Run HERE, on a machine with network, before a GPU session: downloads the cp312 manylinux
# x86-64 wheels that the GPU machine's image lacks (it has Python 3.12 with torch, onnx,
# numpy, pytest and the nvidia-* CUDA 13 packages, but a CPU-only onnxruntime and no network),
# then packs them into carry folders .whl1/, .whl2/, ... of at most CARRY_MIB each (one device
# call carries at most 64 MiB, the working tree included), splitting the ~255 MB
# onnxruntime-gpu wheel with `split -b`. benchmarks/gpu_check.sh reassembles and checks it.
#
#     bash benchmarks/gpu_wheels.sh        # then make the device calls it prints
#
# Environment: ORT_GPU_VERSION (default 1.31.1, what pyproject's [gpu] extra,
# onnxruntime-gpu[cuda,cudnn]>=1.22, takes today: the CUDA 13 build the image's nvidia-*
# packages match), CARRY_MIB (default 60), PYTHON (default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_GPU_VERSION=${ORT_GPU_VERSION:-1.31.1}
CARRY_MIB=${CARRY_MIB:-60}
PART_MIB=$((CARRY_MIB - 2))  # a part and the small files beside it stay under CARRY_MIB
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
STAGE=.whl
# The image's packages these wheels need (docs: /work/.library/device/KINDS.md's list).
IMAGE_HAS=(flatbuffers numpy packaging protobuf)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)

download() {
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$STAGE" "$@"
}

check_requirements() {  # every wheel's requirements (markers for cp312 Linux x86-64) are
    # in the set or in the image; prints them, fails on a missing one
    "$PYTHON" - "$STAGE" "${IMAGE_HAS[@]}" <<'PY'
import sys, zipfile
from pathlib import Path
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "extra": ""}
stage, image = Path(sys.argv[1]), {canonicalize_name(n) for n in sys.argv[2:]}
wheels = sorted(stage.glob("*.whl"))
have = {canonicalize_name(w.name.split("-")[0]) for w in wheels} | image
missing = []
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines
            if line.startswith("Requires-Dist:")]
    needed = [r for r in reqs if r.marker is None or r.marker.evaluate(env)]
    print(f"{wheel.name}: requires {', '.join(str(r) for r in needed) or 'nothing'}")
    missing += [f"{wheel.name} requires {r}" for r in needed
                if canonicalize_name(r.name) not in have]
for line in missing:
    print(f"missing: {line}", file=sys.stderr)
sys.exit(1 if missing else 0)
PY
}

fetch() {
    rm -rf "$STAGE" .whl[0-9]*/
    mkdir -p "$STAGE"
    download "onnxruntime-gpu==$ORT_GPU_VERSION" 'paho-mqtt>=2.0,<3' 'pydantic>=2.6,<3' \
        'cryptography>=42' cffi pycparser annotated-types typing-inspection typing-extensions
    # pydantic pins its core exactly: take the pin from the wheel just downloaded.
    local core
    core=$(unzip -p "$STAGE"/pydantic-*.whl '*.dist-info/METADATA' \
        | sed -n 's/^Requires-Dist: pydantic-core==\([0-9.]*\).*/\1/p')
    download "pydantic-core==$core"
    check_requirements
}

mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }

pack() {  # parts of the big wheel and the small wheels, greedily into .whlK/ folders
    local big sum folder=1 used=0 file size
    big=$(ls "$STAGE"/onnxruntime_gpu-*.whl)
    sum=$(cd "$STAGE" && sha256sum "$(basename "$big")")
    split -b "${PART_MIB}m" -d -a 2 "$big" "$big.part"
    rm "$big"
    for file in "$STAGE"/*.whl.part[0-9]* "$STAGE"/*.whl; do
        size=$(mib "$file")
        if (( used > 0 && used + size > CARRY_MIB - 1 )); then
            folder=$((folder + 1)); used=0
        fi
        mkdir -p ".whl$folder"
        mv "$file" ".whl$folder/"
        used=$((used + size))
    done
    for dir in .whl[0-9]*/; do  # each folder says what the whole set is
        echo "$sum" > "$dir/onnxruntime-gpu.sha256"
        find .whl[0-9]*/ -name '*.whl.part[0-9]*' -printf '%f\n' | sort > "$dir/onnxruntime-gpu.parts"
    done
    rmdir "$STAGE"
}

report() {
    local tree n
    tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
    n=$(find . -maxdepth 1 -name '.whl[0-9]*' -type d | wc -l)
    echo
    for dir in .whl[0-9]*/; do
        printf '%s %s MiB (+ the working tree, %s MiB): %s\n' "$dir" \
            "$(( $(du -sb "$dir" | cut -f1) / 1048576 ))" "$((tree / 1048576))" \
            "$(find "$dir" -type f -name '*.whl*' -printf '%f\n' | sort | tr '\n' ' ')"
    done
    echo
    echo "Device calls, in this order, each within 30 s of the previous one's end (the machine"
    echo "stays warm 30 s and keeps the ignored folders already carried; a cold start loses them):"
    for k in $(seq 1 $((n - 1))); do
        echo "  $k. run(carry=[\".whl$k\"], timeout_s=120, command=\"du -sh .whl*/ && ls .whl*/\")"
    done
    echo "  $n. run(carry=[\".whl$n\"], timeout_s=600, command=\"bash benchmarks/gpu_check.sh\")"
    echo "Then fetch \$OUT's files (pytest-gpu.log, gpu-bench.log, doctor.json, BENCHMARKS.md,"
    echo "summary.txt) and give_back. Delete the folders afterwards: rm -rf .whl*/"
}

fetch
pack
report
