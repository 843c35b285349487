#!/usr/bin/env bash
# Session 8, run 2: the feeder's stream primed before READY.
set -u
R=/tmp/r2; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
( cd model-host && ../.carry/model-host-tests stream 2>&1 | tail -8 ) > $R/stream-tests.txt
CARRY=.carry OUT=$R/c256 ROUNDS=3 CLIENTS=256 VARIANTS="before before@old warm@old" SECONDS_LEVELS=5 FIRST=2 scripts/gpu_after_ready > $R/c256.out 2>&1
CARRY=.carry OUT=$R/c32 ROUNDS=3 CLIENTS=32 VARIANTS="after:4 after:4@old" SECONDS_LEVELS=5 FIRST=2 scripts/gpu_after_ready > $R/c32.out 2>&1
grep -h 'uploads primed' $R/c256/host-before-c256-r*.log | cut -c1-250 > $R/primed.txt
tar czf $OUT/r2.tgz -C /tmp r2
