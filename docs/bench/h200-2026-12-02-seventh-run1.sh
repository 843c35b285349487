#!/usr/bin/env bash
# Device call 5 (seventh session): where READY's time goes, per phase and
# per warm-up thread, with all 13 default shapes and with fewer.
set -uo pipefail
R=/tmp/res; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
W=/tmp/w; mkdir -p $W
python3 scripts/export_resnet50.py --out $W/m13 --max-batch-size 128 --precision fp16 --channels-last >/dev/null
for v in "m4:1,8,32" "m3:1,16"; do
  d=${v%%:*}; mkdir -p $W/$d; cp $W/m13/model.pt $W/$d/
  sed "s/^# batch_sizes:.*/batch_sizes = [${v#*:}]/" $W/m13/model.toml > $W/$d/model.toml
done
grep -h batch_sizes $W/*/model.toml
nproc; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
for round in 1 2 3; do
  for d in m13 m4 m3; do
    log=$R/$d-$round.log
    .carry/model-host --socket $W/$d.sock --model $W/$d --device cuda >$log 2>&1 &
    pid=$!
    for _ in $(seq 600); do grep -q "startup breakdown" $log && break; sleep 0.05; done
    kill -TERM $pid; wait $pid
    echo "$d round $round: $(grep -h 'startup breakdown' $log | sed 's/.*device_ready_ms/device_ready_ms/')"
  done
done
python3 - <<'PY'
import time, torch
t=time.perf_counter(); torch.zeros(1,device='cuda'); torch.cuda.synchronize(); t1=time.perf_counter()
m=torch.jit.load('/tmp/w/m13/model.pt', map_location='cuda'); torch.cuda.synchronize(); t2=time.perf_counter()
m=m.eval().half(); torch.cuda.synchronize(); t3=time.perf_counter()
f=torch.jit.freeze(m); t4=time.perf_counter()
o=torch.jit.optimize_for_inference(f); t5=time.perf_counter()
mc=torch.jit.load('/tmp/w/m13/model.pt', map_location='cpu'); t6=time.perf_counter()
mc=mc.to('cuda'); torch.cuda.synchronize(); t7=time.perf_counter()
print(f"python: cuda init {t1-t:.3f} load->cuda {t2-t1:.3f} half {t3-t2:.3f} freeze {t4-t3:.3f} optimize {t5-t4:.3f} load->cpu {t6-t5:.3f} cpu->cuda {t7-t6:.3f}")
PY
tar czf $OUT/results.tgz -C /tmp res
for f in $R/m13-2.log $R/m4-2.log; do echo "== $f"; grep -v "DEBUG" $f | sed 's/^[^ ]* //' | cut -c1-220 | head -60; done
