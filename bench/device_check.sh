#!/usr/bin/env bash
# The GPU checks, in one command, for a machine with a CUDA device and CuPy (and, optionally, JAX and
# PyTorch with CUDA): the gpu-marked tests, `rgraph train` on the CuPy backend, a per-kernel profile of
# gv and hv on the GPU, and bench/products.py on the GPU beside the peers. Each part runs under its own time limit and writes its log to $OUT
# (default /tmp/rgraph-device-check); one failing part does not stop the others.
#
#   bash bench/device_check.sh                       # from the repository root
#   PARTS=tests,bench bash bench/device_check.sh     # some parts only (env, tests, train, profile, bench)
#
# Python packages missing on that machine can travel as wheels in .whl/ (installed to /tmp/site).
set -u
OUT=${OUT:-/tmp/rgraph-device-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
py=python3
if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
if ! $py -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
    # no build tools there: import from the tree (rgraph.ops is installed from ops/)
    ln -sfn ../ops rgraph/ops
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

PARTS=${PARTS:-env,tests,train,profile,bench}

part() {  # part NAME SECONDS COMMAND...: run one part under a time limit, log to $OUT/NAME.txt
    local name=$1 limit=$2; shift 2
    [[ ",$PARTS," == *",$name,"* ]] || return 0
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n "${TAIL:-40}" "$OUT/$name.txt"
    echo "=== $name: exit $rc after $((SECONDS - start))s"
}

part env 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -2;
  $py -c 'import cupy, numpy, numba, sys; print(sys.version); print(\"cupy\", cupy.__version__, \"numpy\",
  numpy.__version__, \"numba\", numba.__version__, \"cuda\", cupy.cuda.runtime.runtimeGetVersion())';
  $py -m pip list 2>/dev/null | grep -i -E '^(jax|jaxlib|torch) '"
part tests "${TESTS_LIMIT:-240}" $py -m pytest -q -rs -p no:cacheprovider tests/test_cupy_backend.py
part train "${TRAIN_LIMIT:-150}" $py -m rgraph.cli train --backend cupy --epochs "${EPOCHS:-5}" --no-progress --out "$OUT/run"
part profile "${PROFILE_LIMIT:-90}" bash -c "for e in gv hv; do for w in mlp vgg-mini; do
  $py bench/profile_kernels.py --backend cupy --workload \$w --entry \$e --calls 10 --top 10; done; done"
part bench "${BENCH_LIMIT:-300}" $py bench/products.py --backend cupy --repeats "${REPEATS:-20}" \
    --workloads "${WORKLOADS:-mlp,vgg-mini,vgg11}"
