#!/usr/bin/env bash
# Device call 2, the final commit: ceiling + split (fp16), the build before
# this session and the opt-in spin at 1 and 32 clients, fp32 channels-last
# at the peak, READY three times and the answers check.
set -uo pipefail
R=/tmp/res; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
nproc > $R/machine.txt
CARRY=.carry OUT=$R/final STEPS="ceiling split" VARIANTS=fp16 CONC=1,32,512 SECONDS_PER_LEVEL=5 LABEL=-final scripts/gpu_ceiling > $R/final.log 2>&1
CARRY=.carry/old OUT=$R/old STEPS=split VARIANTS=fp16 CONC=1,32 SECONDS_PER_LEVEL=5 LABEL=-old scripts/gpu_ceiling > $R/old.log 2>&1
MODEL_HOST_SPIN_US=1000 CARRY=.carry OUT=$R/spin STEPS=split VARIANTS=fp16 CONC=1,32 SECONDS_PER_LEVEL=5 LABEL=-spin1000 scripts/gpu_ceiling > $R/spin.log 2>&1
CARRY=.carry OUT=$R/fp32 STEPS=split VARIANTS=fp32-cl CONC=512 SECONDS_PER_LEVEL=5 LABEL=-final scripts/gpu_ceiling > $R/fp32.log 2>&1
CARRY=.carry OUT=$R/startup RUNS=3 scripts/gpu_startup > $R/startup.log 2>&1
rm -f $R/*/split-logs*.tgz
cat $R/*/split-*.jsonl > $R/rows.jsonl
for d in /tmp/gpu_ceiling_work/fp*; do echo "== $d"; cat $d/startup.jsonl; grep -h "ready\"\|CUDA graphs" $d/logs/host*.log | head -4; done > $R/startup-split.txt 2>&1
tar czf $OUT/results.tgz -C /tmp res
python3 - <<'PY'
import json
for l in open('/tmp/res/rows.jsonl'):
    r=json.loads(l); print(r['label'], r['concurrency'], round(r['images_per_second']), r['p50_ms'], r.get('queue_ms_mean'), r.get('total_ms_mean'), r.get('decode_ms_mean'), r.get('mean_batch'), r.get('cpu_busy_pct'))
PY
grep -h "graph16\|pipeline16\|frozen" $R/final/ceiling.log | head -12
tail -15 $R/startup.log
