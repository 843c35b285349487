#!/usr/bin/env bash
# Session 8, run 3: where the first second at 256 clients goes (host per-request times).
set -u
R=/tmp/r3; mkdir -p $R
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
RUST_LOG="info,model_host::pipeline::batch=debug" CARRY=.carry OUT=$R/c256 ROUNDS=2 CLIENTS=256 VARIANTS="before warm" SECONDS_LEVELS=4 FIRST=2 scripts/gpu_after_ready > $R/c256.out 2>&1
python3 - $R/c256/host-*.log <<'PY' > $R/windows.txt
import sys, re, datetime
def ts(line):
    return datetime.datetime.fromisoformat(line[:26].rstrip('Z')).timestamp()
for path in sys.argv[1:]:
    ready = None; rows = []
    for line in open(path):
        if 'startup breakdown' in line: ready = ts(line)
        m = re.search(r'queue_us=(\d+) inference_us=(\d+) batch_size=(\d+)', line)
        if m and ready: rows.append((ts(line) - ready, int(m[1]), int(m[2]), int(m[3])))
    print(path.split('/')[-1], len(rows), "requests after READY")
    w = {}
    for t, q, i, b in rows:
        if t < 0: continue
        w.setdefault(int(t * 10), []).append((q, i, b))
    for k in sorted(w)[:40]:
        xs = w[k]; qs = sorted(x[0] for x in xs); inf = sorted(x[1] for x in xs); bs = sorted(x[2] for x in xs)
        p = lambda v, f: v[min(len(v) - 1, int(len(v) * f))] / 1000
        print(f"  {k/10:4.1f}s n={len(xs):5d} queue p50 {p(qs,.5):6.1f} p99 {p(qs,.99):6.1f} ms  inference p50 {p(inf,.5):5.1f} p99 {p(inf,.99):5.1f} ms  batch p50 {bs[len(bs)//2]}")
PY
tar czf $OUT/r3.tgz -C /tmp r3
