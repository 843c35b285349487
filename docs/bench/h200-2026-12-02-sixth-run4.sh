#!/usr/bin/env bash
# Device call 4: the review's commit against the commit before it, in one
# call, interleaved (JPEG and pixels at 1, 32, 512 clients), after run 3's
# JPEG rows came out low on another machine.
set -uo pipefail
R=/tmp/res; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
for round in 1 2; do
  CARRY=.carry/prev OUT=$R/prev$round STEPS=split VARIANTS=fp16 CONC=1,32,512 SECONDS_PER_LEVEL=5 LABEL=-prev$round scripts/gpu_ceiling > $R/prev$round.log 2>&1
  CARRY=.carry OUT=$R/now$round STEPS=split VARIANTS=fp16 CONC=1,32,512 SECONDS_PER_LEVEL=5 LABEL=-now$round scripts/gpu_ceiling > $R/now$round.log 2>&1
done
rm -f $R/*/split-logs*.tgz
cat $R/*/split-*.jsonl > $R/rows.jsonl
tar czf $OUT/results.tgz -C /tmp res
python3 - <<'PY'
import json
for l in open('/tmp/res/rows.jsonl'):
    r=json.loads(l); print(r['label'], r['concurrency'], round(r['images_per_second']), r['p50_ms'], r.get('queue_ms_mean'), r.get('total_ms_mean'), r.get('decode_ms_mean'), r.get('mean_batch'), r.get('cpu_busy_pct'))
PY
