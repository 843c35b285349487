#!/usr/bin/env python3
"""Job step throughput of an iterative model, served and in-process.

For each count of concurrent jobs N (--jobs, default 1,8,64):

  in-process  the model's own loop in this process: start() for N jobs,
              then `steps` calls of step() on all N rows, then finish();
              N * steps / seconds (the ceiling, on --device)
  served      N jobs submitted at once to a running gateway: N * steps over
              the host's own time from the first job's start to the last
              one's end (the jobs' timestamps, in ms), and over the wall
              time from the first submit to the last success that /metrics
              shows (so with the HTTP round trips and a 100 ms poll)

Both use the same model file, steps and device (start the host with the
same --device and, on the CPU, the same --cpu-threads as --threads here).

    python3 bench/jobs_bench.py --model models/digit-diffusion \\
        --gateway http://127.0.0.1:8080 --device cpu --threads 2
"""
import argparse
import json
import re
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import torch


def in_process(model, n, steps, device, repeats):
    """Best of `repeats`: steps per second of n jobs run together."""
    params = torch.stack([torch.arange(n) % 10, torch.arange(n)], 1).long().to(device)
    index = [torch.full([n], i, dtype=torch.long, device=device) for i in range(steps)]
    total = torch.full([n], steps, dtype=torch.long, device=device)
    best = 0.0
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first is warm-up
            if device != "cpu":
                torch.cuda.synchronize()
            started = time.perf_counter()
            state = model.start(params)
            for i in range(steps):
                state = model.step(state, index[i], total)
            model.finish(state).cpu()
            best = max(best, n * steps / (time.perf_counter() - started))
    return best


def metric(gateway, name, label=""):
    """The sum of `name`'s series (those whose labels include `label`)."""
    text = urllib.request.urlopen(f"{gateway}/metrics").read().decode()
    found = re.finditer(rf"^{re.escape(name)}(?:{{([^}}]*)}})? (\S+)$", text, re.M)
    return sum(float(m.group(2)) for m in found if label in (m.group(1) or ""))


def full_batches(gateway, n):
    """Step batches of exactly n jobs the host has run."""
    return metric(gateway, "splitserve_host_job_step_batches_by_size_total", f'size="{n}"')


def served(gateway, model_name, n, steps, repeats):
    """Best of `repeats`: steps per second of n jobs submitted together, by
    the host's clock and by the wall clock, and while all n ran in one batch
    (the step batches of n in the window from the last job's start to the
    first one's end: the submits' spread left out)."""
    best, best_wall, spread, best_full = 0.0, 0.0, 0, None
    for r in range(repeats):
        ids = [None] * n
        done_before = metric(gateway, "splitserve_host_job_steps_total")
        full_before = full_batches(gateway, n)
        body = lambda i: json.dumps({"class": i % 10, "seed": r * 1000 + i, "steps": steps}).encode()

        def submit(i):
            request = urllib.request.Request(f"{gateway}/v1/models/{model_name}/jobs", data=body(i),
                                             headers={"Content-Type": "application/json"}, method="POST")
            answer = urllib.request.urlopen(request)
            assert answer.status == 202
            ids[i] = json.loads(answer.read())["id"]

        started = time.perf_counter()
        threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while metric(gateway, "splitserve_host_job_steps_total") < done_before + n * steps:
            time.sleep(0.1)
        best_wall = max(best_wall, n * steps / (time.perf_counter() - started))
        jobs = [json.loads(urllib.request.urlopen(f"{gateway}/v1/jobs/{i}").read()) for i in ids]
        assert all(j["status"] == "succeeded" for j in jobs), jobs
        host_ms = max(j["finished_ms"] for j in jobs) - min(j["started_ms"] for j in jobs)
        rate = n * steps / (max(host_ms, 1) / 1e3)
        window_ms = min(j["finished_ms"] for j in jobs) - max(j["started_ms"] for j in jobs)
        full = full_batches(gateway, n) - full_before
        if window_ms >= 20 and full > 0:
            best_full = max(best_full or 0.0, full * n / (window_ms / 1e3))
        if rate > best:
            # How far apart the jobs joined: the submits' own spread, during
            # which the batch runs part full.
            best, spread = rate, max(j["started_ms"] for j in jobs) - min(j["started_ms"] for j in jobs)
    return best, best_wall, spread, best_full


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/digit-diffusion"))
    ap.add_argument("--gateway", help="a gateway serving the model; without it, in-process only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--jobs", default="1,8,64")
    ap.add_argument("--steps", type=int, default=0, help="steps per job (0: the model's)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    config = tomllib.loads((args.model / "model.toml").read_text())
    steps = args.steps or config["iterative"]["steps"]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch._C._jit_set_profiling_mode(False)  # as the host runs it
    model = torch.jit.load(str(args.model / config["file"]), map_location=args.device).eval()
    for n in (int(x) for x in args.jobs.split(",")):
        row = {"jobs": n, "steps": steps, "device": args.device,
               "in_process_steps_per_s": round(in_process(model, n, steps, args.device, args.repeats), 1)}
        if args.gateway:
            host, wall, spread, full = served(args.gateway, config["name"], n, steps, args.repeats)
            row["served_steps_per_s"] = round(host, 1)
            if full:
                row["served_full_batch_steps_per_s"] = round(full, 1)
                row["served_full_batch_share"] = round(full / row["in_process_steps_per_s"], 3)
            row["joined_within_ms"] = spread
            row["served_share"] = round(host / row["in_process_steps_per_s"], 3)
            row["served_wall_steps_per_s"] = round(wall, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
