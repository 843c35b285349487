#!/usr/bin/env bash
# Device call 8: the default (4 shapes before READY, 4 threads after)
# against all 13 before READY, 32 and 256 clients, 20 s from READY, twice.
set -uo pipefail
R=/tmp/res8; mkdir -p $R
CARRY=.carry OUT=$R/final ROUNDS=2 CLIENTS="32 256" VARIANTS="after:4 before" SECONDS_LEVELS=20 FIRST=10 scripts/gpu_after_ready > $R/final.log 2>&1
tar czf $OUT/results.tgz -C /tmp res8
grep -v "^  " $R/final.log | grep -v "per second" | tail -30
