#!/usr/bin/env python3
"""Are the host's answers the model's? Sends raw 224x224x3 pixels
(application/x-pixels, so no decode or resize differs) to a running
gateway, many at once so that batches of many shapes run (each replayed
from its CUDA graph), and compares every answer's full distribution
(top_k = all classes) with the same model file run in-process, in fp32, on
the same pixels, normalised as the host does (so an fp16 host differs by
its rounding: about 1e-2 in probability on an H200, top-1 the same). Prints the largest difference and
the batch sizes seen; exits non-zero past the tolerance.

    python3 bench/answers_check.py --url http://127.0.0.1:PORT --model DIR
"""
import argparse
import concurrent.futures
import json
import sys
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=96)
    ap.add_argument("--tolerance", type=float, default=2e-2, help="largest allowed probability difference")
    args = ap.parse_args()
    cfg = tomllib.loads((args.model / "model.toml").read_text())
    name, classes = cfg["name"], len(cfg["output"]["labels"])
    h, w = cfg["input"]["height"], cfg["input"]["width"]
    rng = np.random.default_rng(1)
    # Smooth random images (noise makes near-ties a random-weight model flips on).
    coarse = rng.integers(0, 256, (args.images, 8, 8, 3), dtype=np.uint8)
    pixels = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2).float(), size=(h, w), mode="bilinear")
    pixels = pixels.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    m = torch.jit.load(str(args.model / "model.pt"), map_location="cuda").eval()
    mean = torch.tensor(cfg["input"]["mean"], device="cuda").view(1, -1, 1, 1)
    std = torch.tensor(cfg["input"]["std"], device="cuda").view(1, -1, 1, 1)
    with torch.inference_mode():
        x = (torch.from_numpy(pixels).cuda().permute(0, 3, 1, 2).float() / 255 - mean) / std
        ref = torch.cat([torch.softmax(m(x[i : i + 32]).float(), 1) for i in range(0, len(x), 32)]).cpu().numpy()

    def ask(i):
        req = urllib.request.Request(f"{args.url}/v1/models/{name}/predict?top_k={classes}", data=pixels[i].tobytes(),
                                     headers={"Content-Type": "application/x-pixels"})
        body = json.loads(urllib.request.urlopen(req, timeout=60).read())
        got = np.zeros(classes)
        for p in body["predictions"]:
            got[p["index"]] = p["score"]
        return i, got, body["batch_size"]

    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        answers = list(pool.map(ask, range(args.images)))
    worst = max(float(np.abs(got - ref[i]).max()) for i, got, _ in answers)
    top1 = sum(int(got.argmax() == ref[i].argmax()) for i, got, _ in answers)
    sizes = sorted({b for _, _, b in answers})
    peak = float(np.mean(ref.max(1)))
    print(json.dumps({"images": args.images, "max_abs_prob_diff": worst, "mean_top1_prob": peak,
                      "top1_agree": top1, "batch_sizes": sizes}))
    if worst > args.tolerance or top1 < 0.95 * args.images:
        sys.exit(f"answers differ from the in-process model: {worst:.2e} (tolerance {args.tolerance:.0e}), top-1 {top1}/{args.images}")


if __name__ == "__main__":
    main()
