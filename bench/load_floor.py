#!/usr/bin/env python3
"""From disk to serving with a big model: the floor the hardware sets, what
in-process PyTorch takes, and what the host takes, each step timed, in one
run on one GPU (docs/benchmarks.md, "Big models").

  export     a classifier of the size people serve, scripted and saved fp32
             with random weights (nothing downloaded): torchvision's
             ViT-H/14 (632 M parameters, 2.5 GB), or --layers/--width for a
             bigger stack of the same blocks; model.toml asks for fp16 and
             CUDA graphs
  floor      CUDA initialisation; the file read (page cache warm) into a
             small reused pinned buffer by a few threads, and each chunk
             copied to the GPU as the next one is read: GB/s of the read,
             of the copy, and of both overlapped
  pytorch    a fresh python: import torch, torch.jit.load(map_location=
             "cuda"), freeze + fp16, the first answer at batch 1
  host       model-host to READY as it starts by default (no frozen-module
             cache), with --also once more with one model.toml setting
             changed, then twice with --cache-dir: an empty cache (it
             freezes and stores) and then from the cache: each start's own
             breakdown (device, weights, warm-up), how long its work after
             READY took (the shapes left for then, and the freeze with
             freeze_after_ready), and its peak RSS

    python3 bench/load_floor.py --out /tmp/big --host .carry/model-host --json out.jsonl
    python3 bench/load_floor.py --out /tmp/huge --layers 48 --width 2048 --host .carry/model-host
"""
import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

CHUNK = 64 << 20


def export(out: Path, layers: int, width: int, heads: int):
    import torchvision

    out.mkdir(parents=True, exist_ok=True)
    if (out / "model.pt").exists():
        return
    torch.manual_seed(0)
    if layers:
        model = torchvision.models.VisionTransformer(image_size=224, patch_size=14, num_layers=layers, num_heads=heads,
                                                     hidden_dim=width, mlp_dim=4 * width)
        what = f"ViT, {layers} layers of width {width}"
    else:
        model = torchvision.models.vit_h_14(weights=None)
        what = "torchvision ViT-H/14"
    torch.jit.script(model.eval()).save(str(out / "model.pt"))
    labels = ", ".join(f'"class{i}"' for i in range(1000))
    (out / "model.toml").write_text(
        f'name = "{out.name}"\nversion = "1"\nfile = "model.pt"\ndescription = "{what}, random weights (load timing)"\n'
        "[input]\nwidth = 224\nheight = 224\nchannels = 3\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n"
        f"[output]\nkind = \"classification\"\nlabels = [{labels}]\n"
        "[batching]\nmax_batch_size = 16\n[optimization]\nprecision = \"fp16\"\n")


def evict(path: Path):
    """Drops the file's pages from the page cache (posix_fadvise DONTNEED:
    no privilege needed, unlike /proc/sys/vm/drop_caches), so the next read
    comes from the disk; says how much is still resident where fincore is
    installed."""
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if shutil.which("fincore"):
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True, text=True).stdout.strip()
        print(f"   evicted {path.name}: {out or '?'} bytes still resident", file=sys.stderr)


def floor(path: Path, readers: int, cold: bool):
    size = path.stat().st_size
    if cold:
        evict(path)
    else:
        with open(path, "rb") as f:  # page cache warm: the same state the host and PyTorch find
            while f.read(CHUNK):
                pass
    t = time.perf_counter()
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    cuda_init = time.perf_counter() - t
    buffers = [torch.empty(CHUNK, dtype=torch.uint8).pin_memory() for _ in range(2)]
    dest = torch.empty(size, dtype=torch.uint8, device="cuda")
    copy_stream = torch.cuda.Stream()
    done = [torch.cuda.Event() for _ in buffers]
    fd = os.open(path, os.O_RDONLY)

    def read_into(buf, offset, n):
        view = memoryview(buf.numpy())[:n]
        per = -(-n // readers)

        def part(i):
            at = i * per
            got = 0
            while got < min(per, n - at):
                got += os.preadv(fd, [view[at + got:min(at + per, n)]], offset + at + got)
        list(pool.map(part, range(readers)))

    with concurrent.futures.ThreadPoolExecutor(readers) as pool:
        # The read alone.
        t = time.perf_counter()
        for i, offset in enumerate(range(0, size, CHUNK)):
            read_into(buffers[i % 2], offset, min(CHUNK, size - offset))
        read_s = time.perf_counter() - t
        # The copy alone, from one pinned chunk over and over.
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.cuda.stream(copy_stream):
            for offset in range(0, size, CHUNK):
                n = min(CHUNK, size - offset)
                dest[offset:offset + n].copy_(buffers[0][:n], non_blocking=True)
        copy_stream.synchronize()
        copy_s = time.perf_counter() - t
        # Both, overlapped: chunk i is copied while chunk i+1 is read.
        if cold:
            evict(path)
        t = time.perf_counter()
        for i, offset in enumerate(range(0, size, CHUNK)):
            b, n = i % 2, min(CHUNK, size - offset)
            done[b].synchronize()
            read_into(buffers[b], offset, n)
            with torch.cuda.stream(copy_stream):
                dest[offset:offset + n].copy_(buffers[b][:n], non_blocking=True)
                done[b].record(copy_stream)
        copy_stream.synchronize()
        both_s = time.perf_counter() - t
    os.close(fd)
    gb = size / 1e9
    return {"file_gb": round(gb, 3), "cuda_init_s": round(cuda_init, 3), "read_gb_s": round(gb / read_s, 2),
            "copy_gb_s": round(gb / copy_s, 2), "read_and_copy_s": round(both_s, 3), "read_and_copy_gb_s": round(gb / both_s, 2),
            "readers": readers, "chunk_mb": CHUNK >> 20, "page_cache": "cold" if cold else "warm"}


PYTORCH = r"""
import sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
m = torch.jit.load(sys.argv[1], map_location="cuda").eval()
torch.cuda.synchronize(); t2 = time.perf_counter()
m = torch.jit.optimize_for_inference(torch.jit.freeze(m.half()))
torch.cuda.synchronize(); t3 = time.perf_counter()
with torch.inference_mode():
    m(torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.half)).float().softmax(1).topk(5)
torch.cuda.synchronize(); t4 = time.perf_counter()
print({"import_s": t1 - t0, "load_s": t2 - t1, "freeze_fp16_s": t3 - t2, "first_forward_s": t4 - t3, "first_answer_s": t4 - t0})
"""


def pytorch(path: Path, cold: bool):
    if cold:
        evict(path)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PYTORCH, str(path)], capture_output=True, text=True, check=True).stdout
    row = eval(out.strip().splitlines()[-1])  # noqa: S307 (our own child's dict)
    row["wall_s"] = time.perf_counter() - t
    return {k: round(v, 3) for k, v in row.items()}


def peak_rss_gb(pid):
    """The process's peak resident set (VmHWM), GB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 3)
    except OSError:
        pass
    return None


def host(binary: Path, model: Path, work: Path, cache: Path | None, label: str, cold: bool = False):
    if cold:
        evict(model / "model.pt")
    sock = work / "host.sock"
    sock.unlink(missing_ok=True)
    log_path = work / f"host-{label}.log"
    log = open(log_path, "w")
    t = time.perf_counter()
    argv = [str(binary), "--socket", str(sock), "--model", str(model), "--device", "cuda:0"]
    proc = subprocess.Popen(argv + (["--cache-dir", str(cache)] if cache else []), stdout=log, stderr=subprocess.STDOUT)
    ready = None
    while proc.poll() is None and time.perf_counter() - t < 600:
        text = log_path.read_text()
        if "startup breakdown" in text:
            ready = time.perf_counter() - t
            break
        time.sleep(0.02)
    # What the host does after READY (the freeze, when it comes after
    # READY, and the shapes left for then) runs to its end before the
    # host is stopped: its time, and the peak RSS with it.
    settled = None
    while ready is not None and proc.poll() is None and time.perf_counter() - t < 600:
        if "warm-up after READY done" in log_path.read_text():
            settled = time.perf_counter() - t
            break
        time.sleep(0.02)
    rss = peak_rss_gb(proc.pid)
    proc.terminate()
    proc.wait()
    text = log_path.read_text()
    if ready is None:
        print("   host did not get ready; its log ends:\n" + text[-3000:], file=sys.stderr)
    row = {"ready_s": round(ready, 3) if ready else None, "after_ready_done_s": round(settled, 3) if settled else None, "peak_rss_gb": rss,
           "file_gb": round((model / "model.pt").stat().st_size / 1e9, 3)}
    for key in ("device_ready_ms", "weights_loaded_ms", "warmup_done_ms"):
        found = re.search(key + r"=(\d+(\.\d+)?)", text)
        row[key] = float(found.group(1)) if found else None
    for line in text.splitlines():
        if any(k in line for k in ("frozen", "read onto the device", "warm-up and capture done", "CUDA graphs", "model loaded", "cannot", "cuDNN", "device ready", "after READY done")):
            print("   host:", re.sub(r"\x1b\[[0-9;]*m", "", line)[:400], file=sys.stderr)
    return row


def with_setting(model: Path, setting: str) -> Path:
    """A sibling of the model directory whose model.toml sets one more
    [optimization] key (KEY=VALUE, VALUE as TOML writes it), over the same
    model.pt (a link: the same file, the same page cache)."""
    key, value = setting.split("=", 1)
    other = model.parent / f"{model.name}-{key}"
    other.mkdir(exist_ok=True)
    link = other / "model.pt"
    if not link.exists():
        link.symlink_to((model / "model.pt").resolve())
    toml = (model / "model.toml").read_text()
    assert "[optimization]\n" in toml, "model.toml has no [optimization] table"
    (other / "model.toml").write_text(toml.replace("[optimization]\n", f"[optimization]\n{key} = {value}\n", 1))
    return other


def libtorch_start(binary: Path) -> float:
    """What any program linking libtorch pays before its main: the host's
    `--help` (libtorch's static initialisers register thousands of
    operators; the floor's CUDA init is timed after `import torch` has
    paid the same). The median of three."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([str(binary), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return round(sorted(times)[1], 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the model directory (exported there if missing)")
    ap.add_argument("--host", type=Path, help="a model-host binary")
    ap.add_argument("--before", type=Path, help="another model-host binary, started the same way first (host_before): a change's A/B in one run")
    ap.add_argument("--also", metavar="KEY=VALUE",
                    help="start --host once more with model.toml's [optimization] KEY = VALUE (host_also): a setting's A/B in one run, e.g. freeze_after_ready=true")
    ap.add_argument("--no-cache-runs", action="store_true", help="skip the two starts with the frozen-module cache")
    ap.add_argument("--layers", type=int, default=0, help="a ViT of this many layers instead of ViT-H/14")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--steps", default="floor,pytorch,host")
    ap.add_argument("--cold", action="store_true", help="drop the file from the page cache before each timed step (read from the disk)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t = time.perf_counter()
    export(args.out, args.layers, args.width, args.heads)
    print(f"[load] model in {time.perf_counter() - t:.1f} s: {args.out}", file=sys.stderr)
    row = {"model": args.out.name, "page_cache": "cold" if args.cold else "warm"}
    steps = args.steps.split(",")
    # The host and PyTorch first: the floor's process holds a CUDA context.
    # As it starts by default, then with the frozen-module cache twice: the
    # first start freezes and stores the frozen module in an empty cache,
    # the second loads it from there.
    if "host" in steps and args.before:
        row["host_before"] = host(args.before, args.out, args.out, None, "before", args.cold)
    if "host" in steps and args.host:
        row["host"] = host(args.host, args.out, args.out, None, "default", args.cold)
    if "host" in steps and args.host and args.also:
        row["also"] = args.also
        row["host_also"] = host(args.host, with_setting(args.out, args.also), args.out, None, "also", args.cold)
    if "host" in steps and args.host and not args.no_cache_runs:
        cache = args.out / "frozen-cache"
        shutil.rmtree(cache, ignore_errors=True)
        row["host_storing"] = host(args.host, args.out, args.out, cache, "first")
        row["host_cached"] = host(args.host, args.out, args.out, cache, "cached")
    if "pytorch" in steps:
        row["pytorch"] = pytorch(args.out / "model.pt", args.cold)
    if "floor" in steps:
        row["floor"] = floor(args.out / "model.pt", args.readers, args.cold)
        if args.host:
            row["floor"]["libtorch_start_s"] = libtorch_start(args.host)
    print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
