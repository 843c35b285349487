#!/usr/bin/env bash
# Session 8, run 5: the answers' kernels primed beside the weights' load.
set -u
R=/tmp/r5; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
# The test binary looks for models/digits where it was built.
[[ -e /work/main ]] || { mkdir -p /work && ln -s "$PWD" /work/main; }
( cd model-host && ../.carry/model-host-tests stream classifier torch_shim 2>&1 | tail -30 ) > $R/gpu-tests.txt
CARRY=.carry OUT=$R/c256 ROUNDS=3 CLIENTS=256 VARIANTS="before before@old after:4 after:4@old" SECONDS_LEVELS=5 FIRST=2 scripts/gpu_after_ready > $R/c256.out 2>&1
grep -h 'softmax, top-k and read-back loaded\|startup breakdown\|cuDNN and cuBLAS loaded\|model loaded' $R/c256/host-*.log | sed 's/.*INFO//' | cut -c1-200 > $R/first.txt
tar czf $OUT/r5.tgz -C /tmp r5
