#!/usr/bin/env bash
# Session 8, run 6: the final build against the in-process ceiling, and the first seconds after READY at 32 clients.
set -u
R=/tmp/r6; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
CARRY=.carry OUT=$R/ceil STEPS="ceiling split" VARIANTS="fp16 fp32-cl" CONC=1,32,512 SECONDS_PER_LEVEL=5 scripts/gpu_ceiling > $R/ceil.log 2>&1
CARRY=.carry OUT=$R/c32 ROUNDS=2 CLIENTS=32 VARIANTS="after:4 before" SECONDS_LEVELS=5 FIRST=2 scripts/gpu_after_ready > $R/c32.out 2>&1
rm -f $R/*/split-logs*.tgz
tar czf $OUT/r6.tgz -C /tmp r6
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob('/tmp/r6/ceil/*.jsonl')):
    for l in open(f):
        r = json.loads(l)
        print(f.split('/')[-1][:24], r.get('label'), r.get('concurrency', r.get('batch')), round(r.get('images_per_second', 0) or 0), r.get('p50_ms'), r.get('mean_batch'), r.get('cpu_busy_pct'))
PY
grep '^after\|^before' /tmp/r6/c32/summary.txt | cut -c1-200
