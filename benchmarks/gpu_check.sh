#!/usr/bin/env bash
# The one command of a GPU session (device kind nvidia-h200, 10 minutes at most):
#
#     bash benchmarks/gpu_check.sh
#
# 1. wheels: reassembles the onnxruntime-gpu wheel from the carried .whl*/ folders
#    (benchmarks/gpu_wheels.sh made them and printed the device calls) and checks its sha256;
# 2. a fresh venv on the image's Python that sees the image's packages (torch, onnx, numpy,
#    pytest, nvidia-* CUDA 13 libraries) and installs, offline, the wheels and this repo;
# 3. pytest -m gpu tests/test_gpu.py; 4. benchmarks/gpu.py (writes docs/BENCHMARKS.md);
# 5. edge-runtime doctor --json on a small bundle, CUDA required, TensorRT optional;
# 6. a summary. Logs and docs/BENCHMARKS.md go to $OUT when it is set (the device tool's).
#
# Without .whl*/ folders (a machine with network) it installs from the index instead.
# EDGE_GPU_CHECK_DRY=1 (any machine): no venv and no install; runs the steps with $PYTHON
# (default .venv/bin/python): the gpu tests with the CPU standing in
# (EDGE_GPU_TESTS_ON_CPU=1), gpu.py --cpu-dry-run, and doctor (which reports CUDA missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=${EDGE_GPU_CHECK_DRY:-0}
VENV=${EDGE_GPU_VENV:-/tmp/edge-gpu-venv}
WORK=${EDGE_GPU_WORK:-/tmp/edge-gpu-check}
IMAGE_PYTHON=${EDGE_IMAGE_PYTHON:-python3}  # the image's: /opt/torch/.venv/bin/python3
BUDGET=${EDGE_GPU_CHECK_BUDGET_S:-560}      # the device call's 600 s, less a margin
LOGS=${OUT:-$WORK/out}
export PYTHONUNBUFFERED=1
START=$SECONDS
SUMMARY=()
FAILED=0

step() { printf '\n== %s (at %d s)\n' "$*" $((SECONDS - START)); }
note() { SUMMARY+=("$1"); }
fail() { note "$1"; FAILED=1; }

limit() {  # seconds a step may take: at most $1, leaving $2 for the steps after it
    local left=$((BUDGET - (SECONDS - START) - $2))
    echo $((left < $1 ? left : $1))
}

# -- 1. wheels -----------------------------------------------------------------------------

reassemble() {  # the onnxruntime-gpu wheel from its parts in .whl*/; checks its sha256
    local list sums name part found missing=()
    list=$(find .whl*/ -name onnxruntime-gpu.parts -print -quit)
    sums=$(find .whl*/ -name onnxruntime-gpu.sha256 -print -quit)
    if [ -z "$list" ] || [ -z "$sums" ]; then
        echo "no onnxruntime-gpu.parts and .sha256 in .whl*/ (run benchmarks/gpu_wheels.sh)" >&2
        return 1
    fi
    name=$(awk '{print $2}' "$sums")
    mkdir -p "$WORK/wheels"
    : > "$WORK/wheels/$name"
    while read -r part; do
        found=$(find .whl*/ -name "$part" -print -quit)
        if [ -z "$found" ]; then missing+=("$part"); continue; fi
        cat "$found" >> "$WORK/wheels/$name"
    done < "$list"
    if [ ${#missing[@]} -gt 0 ]; then
        echo "missing parts: ${missing[*]} (the machine went cold between the carry calls?" \
             "make every call gpu_wheels.sh printed again, each within 30 s)" >&2
        return 1
    fi
    (cd "$WORK/wheels" && sha256sum -c "$ROOT/$sums")
}

collect_wheels() {
    rm -rf "$WORK/wheels"
    mkdir -p "$WORK/wheels"
    reassemble
    find .whl*/ -name '*.whl' -exec cp {} "$WORK/wheels/" \;
    ls -l "$WORK/wheels"
}

# -- 2. the venv ---------------------------------------------------------------------------

make_venv() {
    rm -rf "$VENV"
    # --without-pip: no ensurepip needed; pip comes from the image's site-packages below.
    "$IMAGE_PYTHON" -m venv --system-site-packages --without-pip "$VENV"
    PY=$VENV/bin/python
    # The image's python3 is itself a venv (/opt/torch/.venv): a venv made from it with
    # --system-site-packages sees the BASE interpreter's site-packages, not the image's
    # torch, onnx and nvidia-*. So the image's site dirs are added by a .pth, after the
    # venv's own site-packages: what is installed here (onnxruntime-gpu) comes first.
    local site
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$IMAGE_PYTHON" - "$site" <<'PY'
import site, sys
from pathlib import Path
dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
Path(sys.argv[1], "_edge_image_site.pth").write_text(
    "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs))
print("image site-packages seen through a .pth:", ", ".join(dirs))
PY
}

cuda_library_path() {  # the nvidia-* packages' lib/ folders (CUDA 13: nvidia/cu13/lib)
    "$PY" - <<'PY'
import glob, importlib.util
spec = importlib.util.find_spec("nvidia")
roots = list(spec.submodule_search_locations or []) if spec else []
print(":".join(sorted({d for r in roots for d in glob.glob(f"{r}/*/lib")})))
PY
}

install_offline() {
    "$PY" -m pip --version
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
        "$WORK"/wheels/*.whl
    local setuptools
    setuptools=$("$PY" -c 'import setuptools; print(setuptools.__version__)' 2>/dev/null || true)
    echo "setuptools ${setuptools:-missing} (the editable install needs >= 64)"
    if [ -n "$setuptools" ] && "$PY" -m pip install -q --no-index --no-deps \
            --no-build-isolation --disable-pip-version-check -e .; then
        return 0
    fi
    echo "editable install failed: putting $ROOT on the venv's path instead"
    echo "$ROOT" > "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/edge_repo.pth"
}

install_online() {  # a machine with network: the [gpu] extra and the test tools, never [dev]
    # ([dev] pulls [cpu] = onnxruntime, which would hide the CUDA provider) nor, where the
    # image has a torch, [export] (it pins torch==2.13.0).
    local extras=gpu
    "$PY" -c 'import torch' 2>/dev/null || extras=gpu,export
    "$PY" -m pip install -q -e ".[$extras]" "pytest>=8" "pytest-timeout>=2.3" \
        "hypothesis>=6.100" "onnx>=1.16" "safetensors>=0.4" "tqdm>=4.66" "psutil>=5.9"
}

verify_runtime() {  # the venv's onnxruntime is the GPU build, and it is the one imported
    "$PY" - <<'PY'
import importlib.metadata as md
import sys
import onnxruntime as ort
from edge.providers import installed_runtimes, runtime_clash
print(f"onnxruntime {ort.__version__} imported from {ort.__file__}")
print("available providers:", ", ".join(ort.get_available_providers()))
for name, version in installed_runtimes().items():
    print(f"distribution {name} {version} in {md.distribution(name).locate_file('')}")
# Both distributions are seen here: the image's onnxruntime (CPU) and the venv's
# onnxruntime-gpu. runtime_clash() reports that, and doctor lists it as a problem, but here it
# is harmless: the venv's site-packages come first on sys.path, so `import onnxruntime` loads
# the GPU build (checked just below); the image's copy is never imported.
print("runtime_clash():", runtime_clash())
assert ort.__file__.startswith(sys.prefix), f"{ort.__file__} is not in the venv {sys.prefix}"
assert "CUDAExecutionProvider" in ort.get_available_providers(), "no CUDA provider"
import cryptography, paho.mqtt, pydantic, torch
print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), pydantic "
      f"{pydantic.__version__}, paho-mqtt {paho.mqtt.__version__}, cryptography "
      f"{cryptography.__version__}")
PY
}

prepare() {
    if [ "$DRY" = 1 ]; then
        PY=${PYTHON:-$ROOT/.venv/bin/python}
        export EDGE_GPU_TESTS_ON_CPU=1  # the gpu tests with the CPU standing in
        note "dry run: no venv, no install; $PY; gpu tests with EDGE_GPU_TESTS_ON_CPU=1"
        return 0
    fi
    step "wheels"
    local online=1
    if compgen -G ".whl*/" > /dev/null; then online=0; collect_wheels; fi
    step "venv $VENV on $("$IMAGE_PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    make_venv
    export LD_LIBRARY_PATH
    LD_LIBRARY_PATH=$(cuda_library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"  # where the CUDA provider finds cuBLAS and cuDNN
    step "install"
    if [ "$online" = 1 ]; then install_online; else install_offline; fi
    step "check the runtime"
    verify_runtime
    note "install: ok (onnxruntime-gpu in $VENV, $((SECONDS - START)) s)"
}

# -- 3-5. tests, benchmark, doctor ----------------------------------------------------------

run_logged() {  # name, log file, seconds, command...: runs it, tees its output, records rc
    local name=$1 log=$2 seconds=$3 rc=0
    shift 3
    step "$name, at most $seconds s"
    if [ "$seconds" -le 10 ]; then fail "$name: not run, out of time"; return 0; fi
    if timeout "$seconds" "$@" 2>&1 | tee "$LOGS/$log"; then rc=0; else rc=$?; fi
    if [ "$rc" = 0 ]; then note "$name: ok"; else fail "$name: exit $rc (see $log)"; fi
}

doctor_bundle() {  # a tiny bundle (reference base, two adapters) and a config for it
    "$PY" - "$WORK/doctor" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from adapter_factory import reference_adapters
from export.onnx.attach import export_attach
work = Path(sys.argv[1])
ref = reference_adapters(work)
export_attach(base="reference", weights=ref["weights"], out=work / "bundle",
              adapters=[ref["lora_head"], ref["bottleneck"]], names=["lora_head", "bottleneck"])
(work / "config.toml").write_text(f'''[device]
id = "gpu-check"
providers = [
    {{ name = "TensorrtExecutionProvider" }},
    {{ name = "CUDAExecutionProvider", required = true }},
    {{ name = "CPUExecutionProvider" }},
]
bundle = "{work / 'bundle'}"
state_dir = "{work / 'state'}"

[batching]
max_batch = 64
''')
PY
}

doctor_verdict() {  # doctor's problems, less the onnxruntime clash expected here (above)
    "$PY" - "$LOGS/doctor.json" <<'PY'
import json, sys
from edge.doctor import report_lines
report = json.loads(open(sys.argv[1]).read())
print("\n".join(report_lines(report)))
clash = report["environment"]["onnxruntime"]["clash"]
real = [p for p in report["problems"] if p != clash]
print(f"doctor: {len(real)} problem(s) besides the expected onnxruntime clash")
sys.exit(1 if real else 0)
PY
}

run_doctor() {
    local seconds rc=0 cli=("$(dirname "$PY")/edge-runtime")
    seconds=$(limit 120 5)
    step "doctor, at most $seconds s"
    if [ "$seconds" -le 10 ]; then fail "doctor: not run, out of time"; return 0; fi
    rm -rf "$WORK/doctor"
    if ! doctor_bundle; then fail "doctor: the bundle could not be built"; return 0; fi
    [ -x "${cli[0]}" ] || cli=("$PY" -m edge.cli)
    timeout "$seconds" "${cli[@]}" doctor --config "$WORK/doctor/config.toml" --json \
        > "$LOGS/doctor.json" || rc=$?
    echo "edge-runtime doctor: exit $rc (1 = it listed problems)"
    if doctor_verdict | tee "$LOGS/doctor.txt"; then
        note "doctor: ok (exit $rc; only the expected onnxruntime clash, if any)"
    elif [ "$DRY" = 1 ]; then
        note "doctor: problems, as expected without a GPU (see doctor.txt)"
    else
        fail "doctor: problems (see doctor.txt)"
    fi
}

main() {
    mkdir -p "$WORK" "$LOGS"
    set -o errtrace  # the trap below fires inside functions too
    trap 'echo "gpu_check.sh: stopped at line $LINENO (exit $?); see install.log" >&2' ERR
    step "machine"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
    else
        echo "nvidia-smi: not on the PATH"
    fi
    # In this shell (its variables are needed below); a failure stops the script here.
    prepare > >(tee "$LOGS/install.log") 2>&1
    wait $! 2> /dev/null || true  # let tee finish the install log
    trap - ERR
    run_logged "pytest -m gpu" pytest-gpu.log "$(limit 240 200)" \
        "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
    local bench=("$PY" benchmarks/gpu.py)
    [ "$DRY" = 1 ] && bench+=(--cpu-dry-run)
    run_logged "benchmarks/gpu.py" gpu-bench.log "$(limit 300 60)" "${bench[@]}"
    run_doctor
    if [ -n "${OUT:-}" ]; then cp docs/BENCHMARKS.md "$OUT/BENCHMARKS.md"; fi
    step "summary"
    printf '%s\n' "${SUMMARY[@]}" "whole check $((SECONDS - START)) s" | tee "$LOGS/summary.txt"
    exit "$FAILED"
}

main "$@"
