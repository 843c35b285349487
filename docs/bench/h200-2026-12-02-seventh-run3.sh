#!/usr/bin/env bash
# Device call 7: threads of the warm-up after READY (1, 4) against all
# shapes before READY; 32 and 256 clients; per-second rows.
set -uo pipefail
R=/tmp/res; mkdir -p $R
CARRY=.carry OUT=$R/threads ROUNDS=1 CLIENTS="32 256" VARIANTS="after:1 after:4 before after:2" SECONDS_LEVELS=10 FIRST=5 scripts/gpu_after_ready > $R/threads.log 2>&1
tar czf $OUT/results.tgz -C /tmp res
grep -v "^  \|^at READY\|^after the" $R/threads.log | tail -40
grep -h "warm-up after READY done" $R/threads/host-*.log | cut -c1-250
