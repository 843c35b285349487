#!/usr/bin/env python3
"""Where a GPU host's start-up warm-up goes, and whether it can overlap
serving (docs/benchmarks.md, "Ready in 1.5 s").

The host runs one eager forward pass per batch shape before READY; on an
H200 each first pass of a shape cost about 0.2 s (ResNet-50, fp16-cl,
frozen, cuDNN heuristics). This probe answers three questions about that
cost, in separate processes so that no cache is shared between them:

  sequential  first-pass ms per shape, one after another (the host today)
  threads     the same shapes split over N threads: is the cost CPU work
              that runs in parallel, or serialised behind a lock?
  background  a foreground loop replays batches while another thread warms
              the other shapes: how much does warming stall serving?

    python3 bench/warmup_probe.py --model DIR --mode sequential --json out.jsonl
"""
import argparse
import json
import statistics
import threading
import time
import tomllib
from pathlib import Path

import torch


def load(model_dir, dtype):
    cfg = tomllib.loads((model_dir / "model.toml").read_text())
    torch._C._jit_set_profiling_mode(False)
    torch.backends.cudnn.benchmark = False
    m = torch.jit.load(str(model_dir / "model.pt"), map_location="cuda").eval()
    m = m.to(dtype)
    m = torch.jit.optimize_for_inference(torch.jit.freeze(m))
    h, w = cfg["input"]["height"], cfg["input"]["width"]
    return m, (3, h, w)


def sample(n, chw, dtype):
    return torch.zeros((n, *chw), device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)


def first_pass_ms(m, n, chw, dtype):
    x = sample(n, chw, dtype)
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.inference_mode():
        m(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--mode", choices=["sequential", "threads", "background"], required=True)
    ap.add_argument("--shapes", default="1,2,4,8,16,32,48,64,80,96,112,128")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--foreground-batch", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    dtype = torch.float16
    shapes = [int(s) for s in args.shapes.split(",")]
    t0 = time.perf_counter()
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    ctx_ms = (time.perf_counter() - t0) * 1e3
    t1 = time.perf_counter()
    m, chw = load(args.model, dtype)
    load_ms = (time.perf_counter() - t1) * 1e3
    row = {"mode": args.mode, "context_ms": round(ctx_ms, 1), "load_freeze_ms": round(load_ms, 1)}

    if args.mode == "sequential":
        per = {n: round(first_pass_ms(m, n, chw, dtype), 1) for n in shapes}
        again = {n: round(first_pass_ms(m, n, chw, dtype), 2) for n in shapes}
        row.update(first_pass_ms=per, second_pass_ms=again, total_ms=round(sum(per.values()), 1))
    elif args.mode == "threads":
        t = time.perf_counter()
        buckets = [shapes[i :: args.threads] for i in range(args.threads)]

        def work(bucket):
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                for n in bucket:
                    first_pass_ms(m, n, chw, dtype)

        ts = [threading.Thread(target=work, args=(b,)) for b in buckets]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        row.update(threads=args.threads, total_ms=round((time.perf_counter() - t) * 1e3, 1))
    else:
        fg = args.foreground_batch
        first_pass_ms(m, fg, chw, dtype)  # the foreground's own shape is warm
        x = sample(fg, chw, dtype)
        done = threading.Event()
        lat_during, lat_after = [], []

        def background():
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                for n in shapes:
                    if n != fg:
                        first_pass_ms(m, n, chw, dtype)
            done.set()

        bg = threading.Thread(target=background)
        t = time.perf_counter()
        bg.start()
        with torch.inference_mode():
            while not done.is_set() or len(lat_after) < 200:
                s = time.perf_counter()
                m(x)
                torch.cuda.synchronize()
                (lat_after if done.is_set() else lat_during).append((time.perf_counter() - s) * 1e3)
        bg.join()
        q = lambda v, p: round(sorted(v)[min(len(v) - 1, int(p * len(v)))], 2) if v else None
        row.update(
            background_ms=round((time.perf_counter() - t) * 1e3, 1),
            during={"n": len(lat_during), "p50": q(lat_during, 0.5), "p99": q(lat_during, 0.99), "max": q(lat_during, 1.0)},
            after={"n": len(lat_after), "p50": q(lat_after, 0.5), "p99": q(lat_after, 0.99), "max": q(lat_after, 1.0)},
        )
    print(json.dumps(row))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
