#!/usr/bin/env bash
# Device call 3: the commit after the review, fp16 against the ceiling in
# the same call, READY twice and the answers check.
set -uo pipefail
R=/tmp/res; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
CARRY=.carry OUT=$R/final STEPS="ceiling split" VARIANTS=fp16 CONC=1,32,512 SECONDS_PER_LEVEL=5 LABEL=-review scripts/gpu_ceiling > $R/final.log 2>&1
CARRY=.carry OUT=$R/startup RUNS=2 scripts/gpu_startup > $R/startup.log 2>&1
rm -f $R/*/split-logs*.tgz
tar czf $OUT/results.tgz -C /tmp res
python3 - <<'PY'
import json
for l in open('/tmp/res/final/split-fp16-review.jsonl'):
    r=json.loads(l); print(r['label'], r['concurrency'], round(r['images_per_second']), r['p50_ms'], r.get('queue_ms_mean'), r.get('total_ms_mean'), r.get('decode_ms_mean'), r.get('mean_batch'), r.get('cpu_busy_pct'))
PY
grep -h "graph16\|pipeline16" $R/final/ceiling.log | head -6
tail -4 $R/startup.log
