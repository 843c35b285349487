"""Benchmark harness: raw (in-process) vs split (HTTP -> gateways -> host)
vs baseline (FastAPI + uvicorn + torch), closed loop, several concurrency
levels. Prints a table, writes rows as JSON lines, a Markdown summary and a
PNG plot. Started by scripts/bench, which sets up what it needs.

Modes:
  raw           the model in-process through tch (model-host's raw_bench)
  split-jpeg    encoded JPEGs at the model's input size, through N gateways
  split-pixels  the same images as raw uint8 (Content-Type: application/x-pixels)
  split-v2      the raw uint8 pixels over the Open Inference Protocol's REST
                infer, as binary tensor data (PIXELS in, PROBABILITIES out)
  split-grpc    the same over gRPC (ModelInfer, raw_input_contents), to the
                same gateways' gRPC ports
  baseline      bench/baseline/server.py, batch 1 per request
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def make_images(model_dir: Path, out: Path, count: int, size=None):
    """Smooth synthetic photos: JPEGs at `size` (WIDTHxHEIGHT; default the
    model's input size, as a client that resizes would send) and the
    model's input pixels raw (height x width x channels uint8)."""
    import numpy as np
    from PIL import Image

    cfg = load_config(model_dir)
    mw, mh, c = cfg["input"]["width"], cfg["input"]["height"], cfg["input"]["channels"]
    w, h = (int(v) for v in size.split("x")) if size else (mw, mh)
    jpeg, raw = out / "jpeg", out / "pixels"
    jpeg.mkdir(parents=True, exist_ok=True)
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        noisy = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(noisy)
        if c == 1:
            img = img.convert("L")
        img.save(jpeg / f"{i:03}.jpg", quality=90)
        decoded = Image.open(jpeg / f"{i:03}.jpg").convert("L" if c == 1 else "RGB").resize((mw, mh), Image.BILINEAR)
        (raw / f"{i:03}.bin").write_bytes(np.asarray(decoded, dtype=np.uint8).tobytes())
    return jpeg, raw


def load_config(model_dir: Path):
    path = model_dir / "model.toml" if model_dir.is_dir() else model_dir
    return tomllib.loads(path.read_text())


def first_answer(url, body, content_type, proc, limit_s):
    """Seconds until `url` answers 200 to a real request (polled every 10 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        try:
            req = urllib.request.Request(url, data=body, headers={"content-type": content_type})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return time.monotonic()
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.01)
    raise RuntimeError(f"no answer from {url} within {limit_s} s")


class Servers:
    """Processes started by the harness; all stopped at the end."""

    def __init__(self, logs: Path):
        self.procs, self.logs = [], logs

    def start(self, name, argv, env=None):
        logf = open(self.logs / f"{name}.log", "w")
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadgen(args, urls, images, content_type, label, jsonl, protocol="body", status_urls=None):
    """One loadgen run per concurrency level, so that each row also gets
    where its time went: the host's batches (count, mean size, gather and
    device time per batch), the gateways' mean stage times, and how busy
    the machine's CPUs were. `status_urls`: the gateways' /v1 URLs, for
    those counters, when `urls` are not (v2, gRPC)."""
    status_urls = status_urls or urls
    for level in args.concurrency.split(","):
        level_json = args.out / "level.jsonl"
        level_json.unlink(missing_ok=True)
        argv = [str(args.bin / "loadgen"), "--images", str(images), "--content-type", content_type,
                "--concurrency", level, "--seconds", str(args.seconds),
                "--warmup-seconds", str(args.warmup), "--label", label, "--json", str(level_json),
                "--protocol", protocol, "--model", args.model_name, "--shape", args.pixels_shape]
        for u in urls:
            argv += ["--url", u]
        before = snapshot(status_urls)
        subprocess.run(argv, check=True)
        after = snapshot(status_urls)
        row = json.loads(level_json.read_text().splitlines()[-1])
        row.update(breakdown(before, after))
        log("  where the time went: " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in
                                                  ("label", "concurrency", "requests", "errors", "images_per_second", "p50_ms", "p90_ms", "p99_ms")))
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")


# The split's processes by role, for their CPU time per request.
ROLE_PIDS = {"gateway": [], "host": []}


def process_cpu_seconds(pids):
    """User + system CPU seconds of live processes, from /proc/PID/stat."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # Fields after the command's closing parenthesis: state is
                # field 3, utime 14 and stime 15.
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_times():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields), idle


def snapshot(urls):
    """Host counters, the gateways' stage sums and counts, and CPU times."""
    base = lambda u: u.split("/v1/")[0]
    with urllib.request.urlopen(f"{base(urls[0])}/v1/host/status", timeout=5) as r:
        host = json.load(r)
    stages = {}
    for u in urls:
        with urllib.request.urlopen(f"{base(u)}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("splitserve_gateway_stage_seconds_sum") or line.startswith("splitserve_gateway_stage_seconds_count"):
                    name, value = line.rsplit(" ", 1)
                    stages[name] = stages.get(name, 0.0) + float(value)
    roles = {role: process_cpu_seconds(pids) for role, pids in ROLE_PIDS.items()}
    return {"host": host, "stages": stages, "cpu": cpu_times(), "roles": roles, "t": time.monotonic()}


def breakdown(a, b):
    ha, hb = a["host"], b["host"]
    batches = hb["batches_done"] - ha["batches_done"]
    requests = hb["requests_done"] - ha["requests_done"]
    out = {}
    if batches:
        out["mean_batch"] = round(requests / batches, 1)
        out["gather_ms_per_batch"] = round(1e3 * (hb["copy_seconds_total"] - ha["copy_seconds_total"]) / batches, 3)
        out["device_ms_per_batch"] = round(1e3 * (hb["inference_seconds_total"] - ha["inference_seconds_total"]) / batches, 3)
    for stage in ("decode", "queue", "inference", "total"):
        key = f'{{stage="{stage}"}}'
        n = b["stages"].get(f"splitserve_gateway_stage_seconds_count{key}", 0) - a["stages"].get(f"splitserve_gateway_stage_seconds_count{key}", 0)
        total = b["stages"].get(f"splitserve_gateway_stage_seconds_sum{key}", 0) - a["stages"].get(f"splitserve_gateway_stage_seconds_sum{key}", 0)
        if n:
            out[f"{stage}_ms_mean"] = round(1e3 * total / n, 3)
    if requests:
        # CPU time per request of all gateways, and of the host.
        for role in ("gateway", "host"):
            out[f"{role}_cpu_ms_per_request"] = round(1e3 * (b["roles"][role] - a["roles"][role]) / requests, 4)
    (ta, ia), (tb, ib) = a["cpu"], b["cpu"]
    if tb > ta:
        out["cpu_busy_pct"] = round(100 * (1 - (ib - ia) / (tb - ta)), 1)
    return out


def run_split(args, name, jpeg, pixels, servers, jsonl, startup):
    sock = Path(tempfile.mkdtemp(prefix="bench-")) / "host.sock"
    one_jpeg = sorted(jpeg.iterdir())[0].read_bytes()
    t0 = time.monotonic()
    ROLE_PIDS["gateway"].clear()
    ROLE_PIDS["host"].clear()
    host = servers.start("host", [str(args.host_bin or args.bin / "model-host"), "--socket", str(sock), "--model", str(args.model),
                                  "--device", args.device, "--slots-per-gateway", str(args.slots)]
                         + (["--cpu-threads", str(args.host_cpu_threads)] if args.host_cpu_threads is not None else []))
    ROLE_PIDS["host"].append(host.pid)
    urls, v2_urls, grpc_urls = [], [], []
    for i in range(args.gateways):
        port, grpc_port = free_port(), free_port()
        g0 = time.monotonic()
        gw = servers.start(f"gateway-{i}", [str(args.bin / "gateway"), "--host-socket", str(sock),
                                             "--listen", f"127.0.0.1:{port}", "--grpc-listen", f"127.0.0.1:{grpc_port}"])
        ROLE_PIDS["gateway"].append(gw.pid)
        v2_urls.append(f"http://127.0.0.1:{port}/v2/models/{name}/infer")
        grpc_urls.append(f"http://127.0.0.1:{grpc_port}")
        url = f"http://127.0.0.1:{port}/v1/models/{name}/predict"
        if i == 0:
            first = first_answer(url, one_jpeg, "image/jpeg", host, args.startup_limit)
            startup.append({"server": "split: model-host (cold start, model load + warm-up)", "seconds": first - t0})
        else:
            first = first_answer(url, one_jpeg, "image/jpeg", gw, 30)
            startup.append({"server": "split: gateway (host already up)", "seconds": first - g0})
        urls.append(url)
    if "split-jpeg" in args.modes:
        loadgen(args, urls, jpeg, "image/jpeg", f"split-jpeg{args.suffix}", jsonl)
    if "split-pixels" in args.modes:
        loadgen(args, urls, pixels, "application/x-pixels", f"split-pixels{args.suffix}", jsonl)
    if "split-v2" in args.modes:
        loadgen(args, v2_urls, pixels, "", f"split-v2-binary{args.suffix}", jsonl, "v2-binary", urls)
    if "split-grpc" in args.modes:
        loadgen(args, grpc_urls, pixels, "", f"split-grpc{args.suffix}", jsonl, "grpc", urls)
    if "split-poisson" in args.modes:
        poisson_search(args, urls, pixels, "application/x-pixels", f"split-poisson{args.suffix}")
    if "split-poisson-jpeg" in args.modes:
        poisson_search(args, urls, jpeg, "image/jpeg", f"split-poisson-jpeg{args.suffix}")
    servers.stop_all()


def poisson_search(args, urls, images, content_type, label):
    """MLPerf's server scenario (raw pixels or JPEGs): Poisson arrivals
    spread over the gateways, and the highest rate whose p99 stays at or
    under --p99-bound-ms. Its trials go to OUT/poisson.jsonl (apart from
    the closed-loop rows: they have a rate, not a concurrency)."""
    argv = [str(args.bin / "loadgen"), "--images", str(images), "--content-type", content_type,
            "--arrival", "poisson", "--rate", str(args.poisson_start), "--p99-bound-ms", str(args.p99_bound_ms),
            "--search-steps", str(args.search_steps), "--max-rate", str(args.poisson_max_rate),
            "--seconds", str(args.seconds), "--warmup-seconds", str(args.warmup), "--label", label,
            "--json", str(args.out / "poisson.jsonl")]
    for u in urls:
        argv += ["--url", u]
    log(f"{label}: Poisson arrivals from {args.poisson_start}/s, p99 bound {args.p99_bound_ms} ms")
    subprocess.run(argv, check=True)


def run_baseline(args, name, jpeg, servers, jsonl, startup):
    port = free_port()
    one_jpeg = sorted(jpeg.iterdir())[0].read_bytes()
    t0 = time.monotonic()
    proc = servers.start("baseline", [args.python, str(ROOT / "bench/baseline/server.py"), "--model", str(args.model),
                                      "--port", str(port), "--device", args.device_python],
                         env={"PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/v1/models/{name}/predict"
    first = first_answer(url, one_jpeg, "image/jpeg", proc, args.startup_limit)
    startup.append({"server": "baseline: FastAPI + uvicorn + torch", "seconds": first - t0})
    subprocess.run([str(args.bin / "loadgen"), "--images", str(jpeg), "--content-type", "image/jpeg",
                    "--concurrency", args.concurrency, "--seconds", str(args.seconds), "--warmup-seconds", str(args.warmup),
                    "--label", f"baseline{args.suffix}", "--json", str(jsonl), "--url", url], check=True)
    servers.stop_all()


def stages(r):
    if "total_ms_mean" not in r:
        return ""
    return " / ".join(f"{r.get(k, 0):.2f}" for k in ("decode_ms_mean", "queue_ms_mean", "inference_ms_mean", "total_ms_mean"))


def cpu_per_request(r):
    if "gateway_cpu_ms_per_request" not in r:
        return ""
    return f"{r['gateway_cpu_ms_per_request']:.3f} / {r['host_cpu_ms_per_request']:.3f}"


def summarise(rows, startup, out: Path, title: str):
    by = {(r["label"], r["concurrency"]): r for r in rows}
    lines = [f"## {title}", "", "| mode | clients | img/s | p50 ms | p90 ms | p99 ms | errors | vs raw | vs baseline | mean batch | gateway decode / host queue / device / total ms (mean) | CPU ms a request: gateways / host | CPU busy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label, c = r["label"], r["concurrency"]
        raw = next((v for (l, cc), v in by.items() if cc == c and l.startswith("raw")), None)
        base = next((v for (l, cc), v in by.items() if cc == c and l.startswith("baseline")), None)
        ratio = lambda other: f"{r['images_per_second'] / other['images_per_second']:.2f}x" if other and other["images_per_second"] else ""
        lines.append(f"| {label} | {c} | {r['images_per_second']:,.1f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['errors']} | {ratio(raw)} | {ratio(base)} | {r.get('mean_batch', '')} | "
                     f"{stages(r)} | {cpu_per_request(r)} | {str(r['cpu_busy_pct']) + '%' if 'cpu_busy_pct' in r else ''} |")
    lines += ["", "| server | seconds from start to first answer |", "|---|---|"]
    lines += [f"| {s['server']} | {s['seconds']:.3f} |" for s in startup]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


def plot(rows, out: Path, title: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot (bench/plot.py can draw one from rows.jsonl later)")
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = sorted((r for r in rows if r["label"] == label), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rs]
        a.plot(xs, [r["images_per_second"] for r in rs], marker="o", label=label)
        b.plot(xs, [r["p99_ms"] for r in rs], marker="o", label=label)
    for ax, ylabel in ((a, "images / s"), (b, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    b.set_yscale("log")
    a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=110)
    log(f"plot: {out / 'bench.png'}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", type=Path, default=ROOT / "target/release", help="folder with model-host, gateway, loadgen, raw_bench")
    p.add_argument("--host-bin", type=Path, default=None, help="another model-host to run instead of --bin's (to compare two builds in one run)")
    p.add_argument("--model", type=Path, default=ROOT / "models/digits")
    p.add_argument("--device", default="cpu", help="model-host --device (cpu, cuda, ...)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument("--slots", type=int, default=256, help="model-host --slots-per-gateway")
    p.add_argument("--host-cpu-threads", type=int, default=None, help="model-host --cpu-threads (default: the host's own)")
    p.add_argument("--modes", default="raw,split-jpeg,split-pixels,baseline",
                   help="any of raw, split-jpeg, split-pixels, split-v2, split-grpc, split-poisson (raw pixels), split-poisson-jpeg, baseline")
    p.add_argument("--p99-bound-ms", type=float, default=15.0, help="split-poisson: the p99 bound of the rate search (MLPerf's is 15 ms for ResNet-50)")
    p.add_argument("--poisson-start", type=float, default=100.0, help="split-poisson: the first rate tried, requests/s (doubled until the bound breaks)")
    p.add_argument("--poisson-max-rate", type=float, default=1e6, help="split-poisson: the highest rate tried")
    p.add_argument("--search-steps", type=int, default=6, help="split-poisson: bisection steps")
    p.add_argument("--python", default=sys.executable, help="python with torch, fastapi, uvicorn for the baseline")
    p.add_argument("--suffix", default="", help="appended to each row's label, e.g. -fp16")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--image-size", default=None, help="WIDTHxHEIGHT of the JPEGs sent (default: the model's input size)")
    p.add_argument("--startup-limit", type=float, default=300)
    p.add_argument("--out", type=Path, default=ROOT / "target/bench")
    p.add_argument("--append", action="store_true", help="keep earlier rows in OUT/rows.jsonl (e.g. fp32 then fp16)")
    args = p.parse_args()
    args.modes = set(args.modes.split(","))
    args.device_python = "cuda" if args.device.startswith("cuda") else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    jsonl = args.out / "rows.jsonl"
    if not args.append:
        jsonl.unlink(missing_ok=True)
        (args.out / "startup.jsonl").unlink(missing_ok=True)
        (args.out / "poisson.jsonl").unlink(missing_ok=True)
    config = load_config(args.model)
    name = args.model_name = config["name"]
    # PIXELS of one image, for the v2 and gRPC modes: [1, height, width, channels].
    args.pixels_shape = ",".join(str(d) for d in (1, config["input"]["height"], config["input"]["width"], config["input"]["channels"]))
    jpeg, pixels = make_images(args.model, args.out / "images", args.images, args.image_size)
    servers, startup = Servers(args.out / "logs"), []
    try:
        if "raw" in args.modes:
            subprocess.run([str(args.bin / "raw_bench"), "--model", str(args.model), "--device", args.device,
                            "--concurrency", args.concurrency, "--seconds", str(args.seconds),
                            "--warmup-seconds", str(args.warmup), "--label", f"raw{args.suffix}",
                            "--json", str(jsonl)], check=True)
        if args.modes & {"split-jpeg", "split-pixels", "split-v2", "split-grpc", "split-poisson", "split-poisson-jpeg"}:
            run_split(args, name, jpeg, pixels, servers, jsonl, startup)
        if "baseline" in args.modes:
            run_baseline(args, name, jpeg, servers, jsonl, startup)
    finally:
        servers.stop_all()
    rows = [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()] if jsonl.exists() else []
    with open(args.out / "startup.jsonl", "a") as f:
        for s in startup:
            f.write(json.dumps({**s, "suffix": args.suffix}) + "\n")
    title = f"{name} on {args.device}, {args.gateways} gateway(s)"
    summarise(rows, startup, args.out, title)
    plot(rows, args.out, title)
    bad = [r for r in rows if r["errors"] or not r["requests"]]
    if bad:
        sys.exit(f"[bench] rows with errors or no answers: {bad}")


if __name__ == "__main__":
    main()
