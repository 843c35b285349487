#!/usr/bin/env python3
"""The in-process server ceiling under Poisson arrivals (MLPerf's server
scenario): the best one Python process does with the same model file when
requests arrive on the same schedule as `loadgen --arrival poisson` sends
them, so that the split's highest rate under a p99 bound is compared with
a server that has no HTTP, no gateways and no sockets.

The model is frozen, `optimize_for_inference`d, fp16 channels-last and
replayed from one CUDA graph per batch shape (the host's shapes: 1, 2, 4,
8, 12, 16, then every 16 up to the max batch). Batching follows the host's
policy: whenever fewer than two batches are on the GPU, everything that
has arrived (up to the max batch) goes as one batch, padded to the next
shape. Requests carry the model's raw uint8 pixels from pinned memory
(`--input pixels`) or JPEG files decoded by torchvision's nvJPEG on the
GPU in one call per batch (`--input jpeg`), normalised on the device. The
answer (softmax top-5) is finished on the GPU and copied back before a
request counts as answered.

Arrivals are not threads: the loop itself admits every request whose
scheduled time has passed, so the schedule is exact, and each latency
counts from the scheduled arrival to when the loop sees its batch done
(the loop spins; it has a core to itself). The schedule is loadgen's:
exponential gaps from the same seeded xorshift64*, so the same seed gives
the same arrivals in both. The search is loadgen's too: double from
--rate until p99 breaks --p99-bound-ms (or a request is dropped), then
bisect --search-steps times.

    python3 bench/server_ceiling.py --model models/resnet50 --images DIR/pixels --input pixels \
        --rate 1000 --p99-bound-ms 15 --seconds 5 --json out.jsonl
"""
import argparse
import collections
import json
import math
import sys
import time
import tomllib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import graph_of, normaliser  # noqa: E402

MASK = (1 << 64) - 1


class Arrivals:
    """loadgen's schedule (bench/src/loadgen/open.rs): xorshift64* uniforms, exponential gaps."""

    def __init__(self, seed, rate):
        self.state = ((seed * 0x9E3779B97F4A7C15) & MASK) | 1
        self.rate = rate

    def next_gap(self):
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & MASK
        s ^= s >> 27
        self.state = s
        x = (s * 0x2545F4914F6CDD1D) & MASK
        u = ((x >> 11) + 0.5) / float(1 << 53)
        return -math.log(u) / self.rate


def batch_shapes(max_batch):
    """The host's default batch shapes."""
    shapes = [b for b in (1, 2, 4, 8, 12, 16) if b <= max_batch]
    shapes += list(range(32, max_batch + 1, 16))
    if shapes[-1] != max_batch:
        shapes.append(max_batch)
    return shapes


class Server:
    def __init__(self, args):
        self.device = torch.device("cuda")
        cfg = tomllib.loads((args.model / "model.toml").read_text())
        self.h, self.w, self.c = cfg["input"]["height"], cfg["input"]["width"], cfg["input"]["channels"]
        self.max_batch = args.max_batch or cfg.get("batching", {}).get("max_batch_size", 128)
        self.shapes = batch_shapes(self.max_batch)
        self.input = args.input
        module = torch.jit.load(str(args.model / "model.pt"), map_location=self.device).eval().half()
        module = torch.jit.optimize_for_inference(torch.jit.freeze(module))
        self.norm = normaliser(cfg, torch.half, self.device)
        files = sorted(p for p in args.images.iterdir() if p.is_file())
        if self.input == "pixels":
            pool = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8).view(self.h, self.w, self.c) for p in files]
            self.pool = torch.stack(pool).pin_memory()
            self.staging = [torch.empty((self.max_batch, self.h, self.w, self.c), dtype=torch.uint8).pin_memory() for _ in range(2)]
        else:
            import torchvision.io

            self.decode_jpeg = torchvision.io.decode_jpeg
            self.files = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
        self.count = len(files)
        # One graph per shape, all reading the same static input.
        self.static_in = torch.empty((self.max_batch, self.c, self.h, self.w), dtype=torch.half, device=self.device)
        self.static_in = self.static_in.contiguous(memory_format=torch.channels_last)
        self.graphs = {}
        for b in self.shapes:
            view = self.static_in[:b]
            graph, out = graph_of(module, view)
            self.graphs[b] = (graph, out)
        self.answers = [torch.empty((self.max_batch, 5), dtype=torch.half).pin_memory() for _ in range(2)]
        self.turn = 0

    def shape_for(self, n):
        return next(b for b in self.shapes if b >= n)

    def launch(self, first, n):
        """Requests first..first+n as one batch; returns an event recorded after its answers' copy back."""
        i = self.turn % 2
        self.turn += 1
        with torch.inference_mode():
            if self.input == "pixels":
                idx = torch.arange(first, first + n) % self.count
                torch.index_select(self.pool, 0, idx, out=self.staging[i][:n])
                pixels = self.staging[i][:n].to(self.device, non_blocking=True)
            else:
                images = self.decode_jpeg([self.files[k % self.count] for k in range(first, first + n)], device=self.device)
                pixels = torch.stack([self.fit(im) for im in images])
            self.static_in[:n].copy_(self.norm(pixels))
            b = self.shape_for(n)
            graph, out = self.graphs[b]
            graph.replay()
            top = out[:n].float().softmax(1).topk(5, 1).values
            self.answers[i][:n].copy_(top, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return done

    def fit(self, chw):
        """A decoded image (C, H, W) at the model's size, as H x W x C uint8."""
        if chw.shape[1:] != (self.h, self.w):
            chw = torch.nn.functional.interpolate(chw[None].float(), size=(self.h, self.w), mode="bilinear", antialias=True)[0]
            chw = chw.round().clamp(0, 255).to(torch.uint8)
        return chw.permute(1, 2, 0)

    def run_rate(self, rate, args):
        """One trial: latencies (s) of requests arriving in the measured part, and the drops."""
        arrivals, t, times = Arrivals(args.seed, rate), 0.0, []
        while True:
            t += arrivals.next_gap()
            if t >= args.warmup_seconds + args.seconds:
                break
            times.append(t)
        inflight = collections.deque()  # (event, first, n)
        latencies, dropped, next_up, arrived = [], 0, 0, 0
        start = time.perf_counter()
        measured = lambda k: times[k] >= args.warmup_seconds  # noqa: E731
        while next_up < len(times) or inflight:
            now = time.perf_counter() - start
            while inflight and inflight[0][0].query():
                _, first, n = inflight.popleft()
                seen = time.perf_counter() - start
                latencies += [seen - times[k] for k in range(first, first + n) if measured(k)]
            while arrived < len(times) and times[arrived] <= now:
                arrived += 1
            if arrived - next_up > args.max_outstanding:
                # Past saturation: the oldest are dropped, as loadgen drops what it cannot send.
                over = arrived - next_up - args.max_outstanding
                dropped += sum(1 for k in range(next_up, next_up + over) if measured(k))
                next_up += over
            if arrived > next_up and len(inflight) < 2:
                n = min(self.max_batch, arrived - next_up)
                inflight.append((self.launch(next_up, n), next_up, n))
                next_up += n
        latencies.sort()
        return latencies, dropped

    def trial(self, rate, args, out):
        latencies, dropped = self.run_rate(rate, args)
        p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("inf")  # noqa: E731
        kept = bool(latencies) and dropped == 0 and p(0.99) <= args.p99_bound_ms
        row = {"label": args.label, "arrival": "poisson", "rate": rate, "requests": len(latencies), "dropped": dropped,
               "p50_ms": round(p(0.5), 3), "p99_ms": round(p(0.99), 3), "kept": kept}
        print(json.dumps(row), flush=True)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()
        return kept


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True, help="raw pixel files (--input pixels) or JPEGs (--input jpeg)")
    ap.add_argument("--input", choices=["pixels", "jpeg"], default="pixels")
    ap.add_argument("--max-batch", type=int, default=0, help="default: model.toml's [batching] max_batch_size, else 128")
    ap.add_argument("--rate", type=float, default=1000.0, help="the first rate tried, requests/s")
    ap.add_argument("--p99-bound-ms", type=float, default=15.0)
    ap.add_argument("--search-steps", type=int, default=6)
    ap.add_argument("--max-rate", type=float, default=1e6)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup-seconds", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-outstanding", type=int, default=8192)
    ap.add_argument("--label", default="server-ceiling")
    ap.add_argument("--json", type=Path, help="append one JSON object per trial")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    server = Server(args)
    out = open(args.json, "a") if args.json else None
    kept, broken, rate = None, None, args.rate
    while broken is None and rate <= args.max_rate:
        if server.trial(rate, args, out):
            kept = rate
        else:
            broken = rate
        rate *= 2
    if broken is not None:
        low, high = kept or 0.0, broken
        for _ in range(args.search_steps):
            mid = (low + high) / 2
            if server.trial(mid, args, out):
                low = mid
            else:
                high = mid
        kept = low
    print(f"highest rate with p99 <= {args.p99_bound_ms} ms: {kept} requests/s", flush=True)


if __name__ == "__main__":
    main()
