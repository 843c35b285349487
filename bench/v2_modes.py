#!/usr/bin/env python3
"""How a local client hands pixels to the gateway over the Open Inference
Protocol, three ways, timed: JSON `data`, binary tensor data after the JSON
header, and a registered system shared-memory region (the gateway started
with --system-shared-memory). Standard library only (and numpy), so it runs
on the GPU machine, whose python has no tritonclient.

    python3 bench/v2_modes.py --url 127.0.0.1:8080 --model digits --requests 500

Each mode: one client, `--requests` sequential requests of one PIXELS image
(the model's input, uint8 [1, h, w, c], random), PROBABILITIES answered as
binary data (as JSON for the JSON mode); prints p50/p99 latency and the
request's bytes on the wire. The shared-memory client writes each request's
pixels into its region (as a real client would), and that copy is timed.
"""

import argparse
import json
import statistics
import sys
import time
import urllib.request
from multiprocessing import shared_memory

import numpy as np


def post(url, body, headers=None):
    request = urllib.request.Request(url, data=body, headers=headers or {})
    with urllib.request.urlopen(request) as response:
        return response.read(), response.headers


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the gateway's host:port")
    ap.add_argument("--model", required=True)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--json-out", help="append one JSON row per mode here")
    args = ap.parse_args()
    base = f"http://{args.url}/v2"
    meta = json.load(urllib.request.urlopen(f"{base}/models/{args.model}"))
    pixels_spec = next(i for i in meta["inputs"] if i["name"] == "PIXELS")
    classes = meta["outputs"][0]["shape"][1]
    shape = [1] + pixels_spec["shape"][1:]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(16)]
    infer_url = f"{base}/models/{args.model}/infer"
    binary_out = {"outputs": [{"name": "PROBABILITIES", "parameters": {"binary_data": True}}]}

    def json_request(image):
        body = json.dumps({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": shape,
                                       "data": image.ravel().tolist()}]}).encode()
        return body, {}

    def binary_request(image):
        raw = image.tobytes()
        header = json.dumps({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": shape,
                                         "parameters": {"binary_data_size": len(raw)}}], **binary_out}).encode()
        return header + raw, {"Inference-Header-Content-Length": str(len(header))}

    region = shared_memory.SharedMemory(create=True, size=images[0].nbytes)
    key = "/" + region.name.lstrip("/")
    for name in ("bench_in",):
        try:
            post(f"{base}/systemsharedmemory/region/{name}/unregister", b"{}")
        except Exception:
            pass
    post(f"{base}/systemsharedmemory/region/bench_in/register",
         json.dumps({"key": key, "offset": 0, "byte_size": images[0].nbytes}).encode())
    shm_header = json.dumps({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": shape, "parameters": {
        "shared_memory_region": "bench_in", "shared_memory_byte_size": images[0].nbytes}}], **binary_out}).encode()

    def shm_request(image):
        region.buf[:image.nbytes] = image.tobytes()
        return shm_header, {}

    rows = []
    try:
        for mode, make in (("json", json_request), ("binary", binary_request), ("shared-memory", shm_request)):
            times, wire = [], 0
            for i in range(args.warmup + args.requests):
                started = time.perf_counter()
                body, headers = make(images[i % len(images)])
                raw, response_headers = post(infer_url, body, headers)
                elapsed = (time.perf_counter() - started) * 1000
                if i >= args.warmup:
                    times.append(elapsed)
                    wire = len(body)
            # The answer must be a whole probability vector, whatever the mode.
            if "Inference-Header-Content-Length" in response_headers:
                split = int(response_headers["Inference-Header-Content-Length"])
                probabilities = np.frombuffer(raw[split:], dtype=np.float32)
            else:
                probabilities = np.array(json.loads(raw)["outputs"][0]["data"], dtype=np.float32)
            assert probabilities.shape == (classes,) and abs(probabilities.sum() - 1) < 1e-3, probabilities
            times.sort()
            row = {"model": args.model, "mode": mode, "input_bytes": images[0].nbytes, "request_bytes": wire,
                   "requests": len(times), "p50_ms": round(statistics.median(times), 3),
                   "p99_ms": round(times[int(0.99 * len(times)) - 1], 3)}
            rows.append(row)
            print(f"{args.model:10} {mode:14} input {row['input_bytes']:>7} B, request {wire:>8} B on the wire: "
                  f"p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms ({len(times)} sequential requests)")
    finally:
        post(f"{base}/systemsharedmemory/region/bench_in/unregister", b"{}")
        region.close()
        region.unlink()
    if args.json_out:
        with open(args.json_out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
