#!/usr/bin/env python3
"""The in-process PyTorch ceiling for a model directory (model.pt + model.toml):
what the best single-process PyTorch program does with the same file on the
same GPU, for the host's throughput to be measured against (docs/benchmarks.md).

Each row is one way of running the model, timed with CUDA events over many
iterations after warm-up (median of --repeats runs):

  saved      torch.jit.load as saved, fp32, inference_mode, cudnn.benchmark
  frozen     + torch.jit.freeze + optimize_for_inference
  frozen16   frozen, cast to fp16, channels-last input
  graph16    frozen16 replayed from a CUDA graph (static input)
  pipeline16 the serving pipeline from pinned host memory: uint8 NHWC pixels
             in pinned memory -> device copy -> normalise -> graph16, on two
             streams so that batch i+1's copy overlaps batch i's compute

    python3 bench/ceiling.py --model models/resnet50 --batches 1,32,128 --json out.jsonl
"""
import argparse
import json
import statistics
import sys
import time
import tomllib
from pathlib import Path

import torch


def timed(fn, iters, repeats):
    """Median milliseconds per call of fn() over `repeats` runs of `iters`."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        runs.append(start.elapsed_time(end) / iters)
    return statistics.median(runs)


def normaliser(cfg, dtype, device):
    mean = torch.tensor(cfg["input"]["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["input"]["std"], device=device).view(1, -1, 1, 1)
    scale = (1.0 / (255.0 * std)).to(dtype)
    shift = (mean / std).to(dtype)
    return lambda u8: u8.permute(0, 3, 1, 2).to(dtype) * scale - shift


def graph_of(module, static_in):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):
            module(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = module(static_in)
    return graph, static_out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--rows", default="saved,frozen,frozen16,graph16,pipeline16")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="append one JSON object per measurement")
    ap.add_argument("--label", default="ceiling")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    cfg = tomllib.loads((args.model / "model.toml").read_text())
    h, w, c = cfg["input"]["height"], cfg["input"]["width"], cfg["input"]["channels"]
    batches = [int(b) for b in args.batches.split(",")]
    rows = args.rows.split(",")
    out = open(args.json, "a") if args.json else None

    def record(row, batch, ms):
        r = {"label": f"{args.label}-{row}", "batch": batch, "ms_per_batch": round(ms, 4),
             "img_per_s": round(batch * 1000.0 / ms, 1)}
        print(json.dumps(r), flush=True)
        if out:
            out.write(json.dumps(r) + "\n")
            out.flush()

    t = time.perf_counter()
    saved = torch.jit.load(str(args.model / "model.pt"), map_location=device).eval()
    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(saved))
    frozen16 = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.load(str(args.model / "model.pt"), map_location=device).eval().half()))
    print(f"loaded and froze in {time.perf_counter() - t:.2f} s", file=sys.stderr)
    norm16 = normaliser(cfg, torch.half, device)

    for b in batches:
        x32 = torch.randn(b, c, h, w, device=device)
        x16 = x32.half().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if "saved" in rows:
                record("saved", b, timed(lambda: saved(x32), args.iters, args.repeats))
            if "frozen" in rows:
                record("frozen", b, timed(lambda: frozen(x32), args.iters, args.repeats))
            if "frozen16" in rows:
                record("frozen16", b, timed(lambda: frozen16(x16), args.iters, args.repeats))
        if "graph16" in rows:
            static_in = x16.clone()
            graph, _ = graph_of(frozen16, static_in)
            record("graph16", b, timed(graph.replay, args.iters, args.repeats))
        if "pipeline16" in rows and b > 1:
            record("pipeline16", b, pipeline(frozen16, norm16, b, h, w, c, args))
    if out:
        out.close()


def pipeline(module, norm, b, h, w, c, args):
    """Pinned uint8 NHWC batches -> device -> normalise -> graph, copies on a
    second stream overlapping the previous batch's compute."""
    device = torch.device("cuda")
    pinned = [torch.randint(0, 256, (b, h, w, c), dtype=torch.uint8).pin_memory() for _ in range(2)]
    staging = [torch.empty((b, h, w, c), dtype=torch.uint8, device=device) for _ in range(2)]
    static_in = norm(staging[0]).contiguous(memory_format=torch.channels_last)
    graph, static_out = graph_of(module, static_in)
    copy_stream = torch.cuda.Stream()
    copied = [torch.cuda.Event() for _ in range(2)]
    consumed = [torch.cuda.Event() for _ in range(2)]
    for e in consumed:
        e.record()
    state = {"i": 0}

    def step():
        i = state["i"] % 2
        state["i"] += 1
        with torch.cuda.stream(copy_stream):
            copy_stream.wait_event(consumed[i])
            staging[i].copy_(pinned[i], non_blocking=True)
            copied[i].record()
        torch.cuda.current_stream().wait_event(copied[i])
        with torch.inference_mode():
            static_in.copy_(norm(staging[i]))
        consumed[i].record()
        graph.replay()
        static_out.float().softmax(1).topk(5, 1)

    return timed(step, args.iters, args.repeats)


if __name__ == "__main__":
    main()
