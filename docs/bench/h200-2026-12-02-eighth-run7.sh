#!/usr/bin/env bash
# Session 8, run 7: normalisation in one kernel (new) against three (old, c414eb8).
set -u
R=/tmp/r7; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
W=/tmp/gpu_ceiling_work
CARRY=.carry OUT=$R/a STEPS="ceiling split" VARIANTS="fp32-cl fp16" CONC=1,512 SECONDS_PER_LEVEL=5 scripts/gpu_ceiling > $R/a.log 2>&1
rm -f $R/a/split-logs*.tgz; cp -r $R/a $OUT/ 2>/dev/null
CARRY=.carry OUT=$R/b STEPS=split VARIANTS="fp32-cl fp16" CONC=1,512 SECONDS_PER_LEVEL=5 HOST_BIN=.carry/old/model-host LABEL=-old scripts/gpu_ceiling > $R/b.log 2>&1
rm -f $R/b/split-logs*.tgz; cp -r $R/b $OUT/ 2>/dev/null
# The answers against the model in-process, fp16 and fp32.
for v in fp16 fp32-cl; do
  sock=/tmp/check-$v.sock; rm -f $sock
  .carry/model-host --socket $sock --model $W/resnet50-$v --device cuda > $R/check-host-$v.log 2>&1 & host=$!
  for _ in $(seq 500); do [[ -S $sock ]] && break; sleep 0.01; done
  .carry/gateway --host-socket $sock --listen 127.0.0.1:18990 > $R/check-gw-$v.log 2>&1 & gw=$!
  for _ in $(seq 1000); do curl -sf http://127.0.0.1:18990/v2/health/ready >/dev/null && break; sleep 0.01; done
  python3 bench/answers_check.py --url http://127.0.0.1:18990 --model $W/resnet50-$v 2>&1 | sed "s/^/$v: /" | tee -a $R/answers.txt
  kill -TERM $gw $host; wait
done
cp $R/answers.txt $OUT/ 2>/dev/null
CARRY=.carry OUT=$R/c STEPS=split VARIANTS="fp32-cl" CONC=512 SECONDS_PER_LEVEL=5 LABEL=-new2 MODES=split-pixels scripts/gpu_ceiling > $R/c.log 2>&1
CARRY=.carry OUT=$R/d STEPS=split VARIANTS="fp32-cl" CONC=512 SECONDS_PER_LEVEL=5 HOST_BIN=.carry/old/model-host LABEL=-old2 MODES=split-pixels scripts/gpu_ceiling > $R/d.log 2>&1
rm -f $R/*/split-logs*.tgz
tar czf $OUT/r7.tgz -C /tmp r7
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob('/tmp/r7/*/ceiling.jsonl')):
    for l in open(f):
        r = json.loads(l)
        if r['batch'] in (1, 128): print(r['label'], r['batch'], r['ms_per_batch'], r['img_per_s'])
for f in sorted(glob.glob('/tmp/r7/*/split-*.jsonl')):
    for l in open(f):
        r = json.loads(l)
        print(r['label'], r['concurrency'], round(r['images_per_second']), 'p50', round(r['p50_ms'], 3), 'batch', r.get('mean_batch'), 'cpu', r.get('cpu_busy_pct'), 'q', r.get('queue_ms_mean'))
PY
