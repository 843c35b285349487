#!/usr/bin/env bash
# Session 8, run 1: the model thread's stream above the warm-up's.
set -u
R=/tmp/r1; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
( cd model-host && ../.carry/model-host-tests torch_shim 2>&1 | tail -25 ) > $R/shim-tests.txt
CARRY=.carry OUT=$R/c32 ROUNDS=3 CLIENTS=32 VARIANTS="after:4 after:4@old before" SECONDS_LEVELS=6 FIRST=2 scripts/gpu_after_ready > $R/c32.out 2>&1
CARRY=.carry OUT=$R/c256 ROUNDS=2 CLIENTS=256 VARIANTS="before warm after:4" SECONDS_LEVELS=6 FIRST=2 scripts/gpu_after_ready > $R/c256.out 2>&1
grep -h 'forward passes on a stream' $R/c32/host-after-t4-c32-r1.log | head -2 > $R/priority.txt
tar czf $OUT/r1.tgz -C /tmp r1
