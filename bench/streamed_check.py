#!/usr/bin/env python3
"""Does a model whose weights the host streamed onto the GPU answer as the
same file loaded by torch.jit.load? Serves MODEL.pt as a tensor model (one
input [3, S, S] fp32, one output of N fp32), as saved: fp32, not frozen,
no CUDA graphs, so that nothing but the load differs from in-process
PyTorch. Sends a few random inputs through /v2 (the raw outputs come back)
and compares them with `torch.jit.load(map_location="cuda")` on the same
inputs. Also prints the host's own line on how the weights were read.
Exits non-zero past the tolerance (relative to the outputs' magnitude:
the same kernels on the same GPU differ by cuDNN's choices at most).

    python3 bench/streamed_check.py --host .carry/model-host --gateway .carry/gateway --model-pt /tmp/gl/vit-h14/model.pt
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} not ready in {seconds} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", type=Path, required=True)
    ap.add_argument("--gateway", type=Path, required=True)
    ap.add_argument("--model-pt", type=Path, required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--outputs", type=int, default=1000)
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="streamed-check-"))
    model = work / "streamed-check"
    model.mkdir()
    (model / "model.pt").symlink_to(args.model_pt.resolve())
    s = args.size
    (model / "model.toml").write_text(
        'name = "streamed-check"\nversion = "1"\nfile = "model.pt"\ndescription = "the file as saved, fp32 (bench/streamed_check.py)"\n'
        f'[[inputs]]\nname = "x"\ndatatype = "FP32"\ndims = [3, {s}, {s}]\n'
        f'[[outputs]]\nname = "y"\ndatatype = "FP32"\ndims = [{args.outputs}]\n'
        '[batching]\nmax_batch_size = 1\n'
        '[optimization]\nprecision = "fp32"\nfreeze = false\ncuda_graphs = false\n')
    sock, port = work / "host.sock", free_port()
    host_log = work / "host.log"
    env = dict(os.environ, RUST_LOG="info,model_host::torch_shim=debug")  # the line saying how the weights were read
    host = subprocess.Popen([str(args.host), "--socket", str(sock), "--model", str(model), "--device", "cuda:0"],
                            stdout=open(host_log, "w"), stderr=subprocess.STDOUT, env=env)
    gateway = None
    try:
        for _ in range(1200):
            if "startup breakdown" in host_log.read_text() or host.poll() is not None:
                break
            time.sleep(0.1)
        gateway = subprocess.Popen([str(args.gateway), "--host-socket", str(sock), "--listen", f"127.0.0.1:{port}", "--no-grpc"],
                                   stdout=subprocess.DEVNULL, stderr=open(work / "gateway.log", "w"))
        wait(f"http://127.0.0.1:{port}/health/ready", 60)
        for line in host_log.read_text().splitlines():
            if "streamed" in line or "torch::jit::load" in line:
                print("host:", line[-200:], file=sys.stderr)
        reference = torch.jit.load(str(args.model_pt), map_location="cuda").eval()
        torch.manual_seed(0)
        worst = 0.0
        for i in range(args.items):
            x = torch.randn(3, s, s)
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, s, s], "data": x.flatten().tolist()}]}
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/streamed-check/infer", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
            got = torch.tensor(answer["outputs"][0]["data"], dtype=torch.float32)
            with torch.no_grad():
                want = reference(x.unsqueeze(0).cuda()).float().cpu().flatten()
            diff = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
            worst = max(worst, diff)
            print(f"item {i}: largest difference {diff:.2e} of the output's magnitude ({want.abs().max().item():.3g})", file=sys.stderr)
        verdict = "same" if worst <= args.tolerance else "DIFFERENT"
        print(json.dumps({"check": "streamed", "model": args.model_pt.parent.name, "items": args.items, "worst_relative": worst, "verdict": verdict}))
        sys.exit(0 if worst <= args.tolerance else 1)
    finally:
        for p in (gateway, host):
            if p is not None:
                p.terminate()
                p.wait(timeout=60)
if __name__ == "__main__":
    main()
