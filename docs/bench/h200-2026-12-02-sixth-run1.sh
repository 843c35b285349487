#!/usr/bin/env bash
# Device call 1: the same call measures the old build, the new gateway
# (lease while decoding, small JPEGs decoded in place) with the host's
# spin off, and with it on.
set -uo pipefail
R=/tmp/res; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
nproc > $R/machine.txt
C="1,32,512"
CARRY=.carry OUT=$R/new STEPS="ceiling split" VARIANTS=fp16 CONC=$C SECONDS_PER_LEVEL=5 LABEL=-new scripts/gpu_ceiling > $R/new.log 2>&1
MODEL_HOST_SPIN_US=1000 CARRY=.carry OUT=$R/spin1000 STEPS=split VARIANTS=fp16 CONC=$C SECONDS_PER_LEVEL=5 LABEL=-spin1000 scripts/gpu_ceiling > $R/spin1000.log 2>&1
CARRY=.carry/old OUT=$R/old STEPS=split VARIANTS=fp16 CONC=$C SECONDS_PER_LEVEL=5 LABEL=-old scripts/gpu_ceiling > $R/old.log 2>&1
MODEL_HOST_SPIN_US=1000 CARRY=.carry OUT=$R/coarse STEPS=split VARIANTS=fp16-coarse CONC=1,32 SECONDS_PER_LEVEL=5 LABEL=-spin1000 scripts/gpu_ceiling > $R/coarse.log 2>&1
rm -f $R/*/split-logs*.tgz
cat $R/*/split-*.jsonl > $R/rows.jsonl
for d in /tmp/gpu_ceiling_work/fp16*; do echo "== $d"; cat $d/startup.jsonl; grep -h "READY\|ready in\|phase\|CUDA graphs" $d/logs/host*.log | head -12; done > $R/startup.txt 2>&1
tar czf $OUT/results.tgz -C /tmp res
python3 - <<'PY'
import json
for l in open('/tmp/res/rows.jsonl'):
    r=json.loads(l); print(r['label'], r['concurrency'], round(r['images_per_second']), r['p50_ms'], r.get('queue_ms_mean'), r.get('total_ms_mean'), r.get('decode_ms_mean'), r.get('mean_batch'), r.get('cpu_busy_pct'))
PY
grep -h "graph16\|pipeline16" $R/new/ceiling.log | head
