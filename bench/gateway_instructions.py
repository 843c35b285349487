#!/usr/bin/env python3
"""Instructions a gateway executes per request, counted by valgrind's
callgrind: repeatable whatever else the machine is doing, so two builds
can be compared on a shared, noisy machine where wall time and CPU time
cannot tell a few percent apart.

A host (run normally) serves the model; the gateway runs under callgrind
twice, answering FEW and then MANY requests from one keep-alive client;
(Ir(MANY) - Ir(FEW)) / (MANY - FEW) is the gateway's instructions a
request, its start and stop cancelled out. Requests are raw pixels to
/v1 predict, and PNGs (decoded by the gateway).

    python3 bench/gateway_instructions.py --bin target/release --model models/digits --label after
"""
import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(port, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health/ready")
            r = c.getresponse()
            body = r.read()
            if r.status == 200 and b"ready" in body:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"gateway on {port} not ready within {seconds} s")


def send(port, path, body, content_type, count):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        c.request("POST", path, body=body, headers={"Content-Type": content_type})
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"answer {r.status}: {data[:200]!r}")


def instructions(out_file):
    text = subprocess.run(["callgrind_annotate", "--threshold=100", out_file], capture_output=True, text=True).stdout
    found = re.search(r"^([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text, re.M) or re.search(r"^([\d,]+)\s+PROGRAM TOTALS", text, re.M)
    if not found:
        raise SystemExit("no PROGRAM TOTALS in callgrind_annotate's output")
    return int(found.group(1).replace(",", ""))


def gateway_run(args, sock, work, body, content_type, count, tag):
    port = free_port()
    out = work / f"callgrind-{tag}-{count}.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    gw = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(args.bin / "gateway"),
                           "--host-socket", str(sock), "--listen", f"127.0.0.1:{port}", "--no-grpc"],
                          stdout=subprocess.DEVNULL, stderr=open(work / f"gateway-{tag}-{count}.log", "w"), env=env)
    try:
        wait_ready(port, 120)
        send(port, "/v1/models/" + args.name + "/predict", body, content_type, count)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=120)
    return instructions(str(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, required=True, help="a folder with model-host and gateway")
    ap.add_argument("--model", type=Path, default=Path("models/digits"))
    ap.add_argument("--few", type=int, default=100)
    ap.add_argument("--many", type=int, default=600)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cfg = tomllib.loads((args.model / "model.toml").read_text())
    args.name = cfg["name"]
    i = cfg["input"]
    pixels = bytes((x * 7) % 256 for x in range(i["width"] * i["height"] * i["channels"]))
    png = sorted((args.model / "testset").rglob("*.png"))[0].read_bytes()
    work = Path(tempfile.mkdtemp(prefix="gw-instr-"))
    sock = work / "host.sock"
    host = subprocess.Popen([str(args.bin / "model-host"), "--socket", str(sock), "--model", str(args.model), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=open(work / "host.log", "w"))
    try:
        for _ in range(600):
            if sock.exists() and "startup breakdown" in (work / "host.log").read_text():
                break
            time.sleep(0.1)
        row = {"label": args.label, "few": args.few, "many": args.many}
        for tag, body, ctype in [("pixels", pixels, "application/x-pixels"), ("png", png, "image/png")]:
            few = gateway_run(args, sock, work, body, ctype, args.few, tag)
            many = gateway_run(args, sock, work, body, ctype, args.many, tag)
            row[f"{tag}_instructions_a_request"] = round((many - few) / (args.many - args.few))
            print(f"[instr] {args.label} {tag}: {few:,} for {args.few}, {many:,} for {args.many}: "
                  f"{row[f'{tag}_instructions_a_request']:,} a request", file=sys.stderr, flush=True)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(timeout=60)


if __name__ == "__main__":
    main()
