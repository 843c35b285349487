#!/usr/bin/env bash
# Device call 6 (seventh session): READY with 4 shapes then the rest
# beside serving, against all 13 before READY; the first seconds after.
set -uo pipefail
R=/tmp/res; mkdir -p $R
CARRY=.carry OUT=$R/after ROUNDS=2 CLIENTS="32 256" SECONDS_LEVELS=16 scripts/gpu_after_ready > $R/after.log 2>&1
tar czf $OUT/results.tgz -C /tmp res
grep -v "^  " $R/after.log | tail -40
grep -h "warm-up after READY done\|cannot\|error\|panic" $R/after/host-*.log | cut -c1-250 | sort | uniq -c | head
