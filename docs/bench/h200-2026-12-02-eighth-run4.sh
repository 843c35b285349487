#!/usr/bin/env bash
# Session 8, run 4: the first batches through softmax, top-k and read-back before READY.
set -u
R=/tmp/r4; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
CARRY=.carry OUT=$R/c256 ROUNDS=3 CLIENTS=256 VARIANTS="before before@old after:4 after:4@old" SECONDS_LEVELS=5 FIRST=2 scripts/gpu_after_ready > $R/c256.out 2>&1
grep -h 'first batches served\|startup breakdown' $R/c256/host-*.log | sed 's/.*INFO//' | cut -c1-200 > $R/first.txt
tar czf $OUT/r4.tgz -C /tmp r4
