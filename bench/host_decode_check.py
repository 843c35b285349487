"""JPEGs decoded on the host's GPU (model.toml `decode = "host"`), judged
over HTTP against the same images decoded by PIL and sent as raw pixels,
and the host-side decode path under hostile files. Needs a gateway in
front of a host that decodes (scripts/gpu_host_decode starts them).

    python3 bench/host_decode_check.py --url http://127.0.0.1:8080 --model resnet50

Checks, each printed with its figures; exits non-zero if one fails:
- photos (sizes from 224x224 to 4032x3024, some with an EXIF orientation)
  get the same top-1 as their PIL-decoded pixels, and class
  probabilities within --tolerance (fp16 and bilinear rounding);
- the host's `jpegs_decoded` counter grew by as many (the files did go
  to the host);
- corrupt scans, sent 64 at a time among good photos: each corrupt one
  gets 200 or 400, never 5xx; every good one its own right answer;
- 256 mutated photos (random bytes anywhere, headers too): 200 or 4xx;
- and the host keeps serving.
"""
import argparse
import io
import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps


def photo(width, height, seed, orientation=1):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(out, format="JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def reference_pixels(jpeg, size=(224, 224)):
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg))).convert("RGB")
    return np.asarray(img.resize(size, Image.BILINEAR), dtype=np.uint8).tobytes()


def post(url, body, content_type):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def post_v2_images(url, images):
    """A v2 request with the images as one BYTES input (binary data, each
    element length-prefixed); every class's probability per image, or the
    error text."""
    data = b"".join(len(i).to_bytes(4, "little") + i for i in images)
    header = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(images)],
                                     "parameters": {"binary_data_size": len(data)}}],
                         "outputs": [{"name": "PROBABILITIES", "parameters": {"binary_data": False}}]}).encode()
    request = urllib.request.Request(url, data=header + data, headers={
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            out = json.loads(response.read())["outputs"][0]
            n, k = out["shape"]
            return response.status, np.asarray(out["data"], dtype=np.float64).reshape(n, k)
    except urllib.error.HTTPError as e:
        return e.code, (e.read() or b"").decode(errors="replace")


def scores(answer):
    out = np.zeros(1000)
    for p in answer["predictions"]:
        out[p["index"]] = p["score"]
    return out


def jpegs_decoded(base, model):
    with urllib.request.urlopen(f"{base}/v1/host/status", timeout=10) as r:
        hosts = json.loads(r.read())
    hosts = hosts if isinstance(hosts, list) else hosts.get("hosts", [hosts])
    return sum(h.get("jpegs_decoded", 0) for h in hosts)


def corrupt(jpeg, seed):
    """Garbage over the middle of the entropy-coded scan; header and
    end-of-image marker intact, so the gateway sends it to the host."""
    data = bytearray(jpeg)
    sos = data.find(b"\xff\xda")
    rng = np.random.default_rng(seed)
    start = sos + 20 + (len(data) - sos) // 4
    data[start:start + (len(data) - sos) // 3] = rng.integers(0, 256, (len(data) - sos) // 3, dtype=np.uint8).tobytes()
    return bytes(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--tolerance", type=float, default=0.05)
    args = ap.parse_args()
    url = f"{args.url}/v1/models/{args.model}/predict?top_k=1000"
    ok = True

    sizes = [(224, 224, 1), (640, 480, 1), (1920, 1080, 1), (1080, 1920, 6), (1920, 1080, 8), (4032, 3024, 3), (800, 600, 2)]
    before = jpegs_decoded(args.url, args.model)
    worst, agree = 0.0, 0
    for i, (w, h, orientation) in enumerate(sizes):
        jpeg = photo(w, h, i, orientation)
        s1, host = post(url, jpeg, "image/jpeg")
        s2, ref = post(url, reference_pixels(jpeg), "application/x-pixels")
        if s1 != 200 or s2 != 200:
            print(f"{w}x{h} orientation {orientation}: status {s1} / {s2}: {host} {ref}")
            ok = False
            continue
        a, b = scores(host), scores(ref)
        diff = float(np.abs(a - b).max())
        worst = max(worst, diff)
        agree += int(a.argmax() == b.argmax())
        print(f"{w}x{h} orientation {orientation} ({len(jpeg)} bytes): top-1 {a.argmax()} vs {b.argmax()}, "
              f"max |p - p_ref| {diff:.4f}, gateway decode {host['timings_ms']['decode']:.2f} ms")
    decoded = jpegs_decoded(args.url, args.model) - before
    print(f"photos: top-1 agreed {agree}/{len(sizes)}, worst probability difference {worst:.4f} "
          f"(tolerance {args.tolerance}); host decoded {decoded} of them")
    ok &= agree == len(sizes) and worst <= args.tolerance and decoded == len(sizes)

    # v2 (the path gRPC shares): IMAGE as BYTES, binary data, two photos in one request.
    pair = [photo(1920, 1080, 50), photo(1080, 1920, 51, 6)]
    before = jpegs_decoded(args.url, args.model)
    status, v2 = post_v2_images(f"{args.url}/v2/models/{args.model}/infer", pair)
    expected = [int(scores(post(url, reference_pixels(p), "application/x-pixels")[1]).argmax()) for p in pair]
    decoded = jpegs_decoded(args.url, args.model) - before
    got = [int(np.argmax(row)) for row in v2] if status == 200 else v2
    print(f"v2 IMAGE (BYTES), 2 photos in one request: status {status}, top-1 {got} vs {expected}, host decoded {decoded}")
    ok &= status == 200 and got == expected and decoded == 2

    good = [photo(1920, 1080, 100 + i) for i in range(8)]
    expected = [int(scores(post(url, reference_pixels(g), "application/x-pixels")[1]).argmax()) for g in good]
    bad = [corrupt(good[i % 8], i) for i in range(24)]
    bodies = [(("good", i % 8), good[i % 8]) for i in range(40)] + [(("bad", i), b) for i, b in enumerate(bad)]
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda kb: (kb[0], post(url, kb[1], "image/jpeg")), bodies))
    bad_status, wrong = {}, 0
    for (kind, i), (status, answer) in results:
        if kind == "good":
            wrong += int(status != 200 or int(scores(answer).argmax()) != expected[i])
        else:
            bad_status[status] = bad_status.get(status, 0) + 1
    print(f"64 at once, 24 corrupt scans among 40 photos: corrupt ones got {bad_status}; good ones wrong {wrong}/40")
    ok &= wrong == 0 and all(s in (200, 400) for s in bad_status)
    # Mutants: 1-64 random bytes changed anywhere after the start marker
    # (headers included), the end marker kept, 64 at a time.
    rng = np.random.default_rng(7)
    mutants = []
    for i in range(256):
        data = bytearray(good[i % 8])
        for at in rng.integers(2, len(data) - 2, int(rng.integers(1, 65))):
            data[at] = int(rng.integers(0, 256))
        mutants.append(bytes(data))
    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(lambda m: post(url, m, "image/jpeg")[0], mutants))
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    print(f"256 mutated photos, 64 at a time: {counts} (200 or 4xx each, no 5xx)")
    ok &= all(s == 200 or 400 <= s < 500 for s in statuses)
    status, _ = post(url, good[0], "image/jpeg")
    print(f"after the hostile files, a photo: {status}")
    ok &= status == 200
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
