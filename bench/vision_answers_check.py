#!/usr/bin/env python3
"""Are a vision model's answers through the split the model's? Sends raw
pixels at the model's input size (application/x-pixels: no decode or resize
differs) to a running gateway, many at once so that batches of several
shapes run (each replayed from its CUDA graph), and compares each answer
with the same model file run in-process in fp32 on the same pixels:

  segmentation  ?format=png (the 8-bit alpha) against round(255 * mask):
                the largest difference and the share of pixels within 2 levels
  detection     the top --top boxes by score against the in-process ones
                (clamped to the image, as the gateway's are):
                the share with a box of the same label, IoU >= 0.9 and a
                score within 0.02 among the in-process top boxes

With --photos, JPEGs too (1920x1080: decoded on the host's GPU when
model.toml says `decode = "auto"`), against the in-process photo pipeline
of bench/vision_ceiling.py in fp32 (nvJPEG, resize or letterbox, the model,
the answer mapped back): a detector's boxes as above in the photo's pixels,
a segmenter's foreground pixel count within 1% of the photo.

A host in fp16 differs by its rounding; exits non-zero past the tolerances.

    python3 bench/vision_answers_check.py --url http://127.0.0.1:PORT --model DIR
"""
import argparse
import concurrent.futures
import io
import json
import sys
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--top", type=int, default=20, help="detection: the boxes compared per image")
    ap.add_argument("--min-share", type=float, default=0.95, help="the share of pixels (or boxes) that must agree")
    ap.add_argument("--photos", type=Path, help="a folder of .jpg files of one size to check as well")
    ap.add_argument("--reference", choices=["fp32", "fp16"], default="fp32",
                    help="in-process as saved in fp32, or frozen in fp16 channels-last as the host runs it (the same arithmetic: "
                         "a random-weight detector's top boxes are near-ties that fp16 rounding reorders against fp32)")
    args = ap.parse_args()
    cfg = tomllib.loads((args.model / "model.toml").read_text())
    name, h, w = cfg["name"], cfg["input"]["height"], cfg["input"]["width"]
    segmentation = "segmentation" in cfg
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 256, (args.images, 8, 8, 3), dtype=np.uint8)
    pixels = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2).float(), size=(h, w), mode="bilinear")
    pixels = pixels.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    loaded = torch.jit.load(str(args.model / "model.pt"), map_location="cuda").eval()
    if args.reference == "fp16":
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(loaded.half()))

        def m(x):
            out = frozen(x.half().contiguous(memory_format=torch.channels_last))
            return tuple(t.float() if t.is_floating_point() else t for t in out) if isinstance(out, tuple) else out.float()
    else:
        m = loaded
    mean = torch.tensor(cfg["input"]["mean"], device="cuda").view(1, -1, 1, 1)
    std = torch.tensor(cfg["input"]["std"], device="cuda").view(1, -1, 1, 1)
    refs = []
    with torch.inference_mode():
        for i in range(0, args.images, 8):
            x = (torch.from_numpy(pixels[i:i + 8]).cuda().permute(0, 3, 1, 2).float() / 255 - mean) / std
            out = m(x)
            if segmentation:
                refs += list((out[:, 0].float() * 255).cpu().numpy())
            else:
                boxes, scores, labels = (t.cpu().numpy() for t in out)
                for b, s, l in zip(boxes, scores, labels):
                    xyxy = np.stack([(b[:, 0] - b[:, 2] / 2) * w, (b[:, 1] - b[:, 3] / 2) * h, (b[:, 0] + b[:, 2] / 2) * w, (b[:, 1] + b[:, 3] / 2) * h], 1)
                    # The gateway clamps boxes to the image, so the reference is too.
                    xyxy = np.clip(xyxy, 0, [w, h, w, h])
                    refs.append((xyxy, s, l))

    query = "format=png" if segmentation else f"score_threshold=0&max_detections={cfg['detection']['max_boxes']}"

    def ask(i):
        req = urllib.request.Request(f"{args.url}/v1/models/{name}/predict?{query}", data=pixels[i].tobytes(),
                                     headers={"Content-Type": "application/x-pixels"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return i, r.read(), r.headers.get("x-batch-size")

    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        answers = list(pool.map(ask, range(args.images)))
    ok = True
    if segmentation:
        worst, within = 0.0, []
        for i, body, _ in answers:
            alpha = np.asarray(Image.open(io.BytesIO(body)), dtype=np.float64)
            diff = np.abs(alpha - refs[i])
            worst = max(worst, float(diff.max()))
            within.append(float((diff <= 2.0).mean()))
        share = float(np.mean(within))
        ok = share >= args.min_share
        print(f"{name}: {len(answers)} masks, largest difference {worst:.1f} of 255, {share:.4f} of pixels within 2 levels of {args.reference} in-process")
    else:
        matched = total = 0
        worst_score = 0.0
        for i, body, _ in answers:
            got = json.loads(body)["detections"][: args.top]
            xyxy, scores, labels = refs[i]
            # The in-process boxes near the top (ties in fp16 may reorder the edge).
            near = np.argsort(-scores)[: args.top * 2]
            for d in got:
                total += 1
                best = max(near, key=lambda j: iou(d["box"], xyxy[j]) if labels[j] == d["index"] else -1)
                if labels[best] == d["index"] and iou(d["box"], xyxy[best]) >= 0.9 and abs(d["score"] - scores[best]) <= 0.02:
                    matched += 1
                    worst_score = max(worst_score, abs(d["score"] - float(scores[best])))
        share = matched / max(total, 1)
        ok = share >= args.min_share
        print(f"{name}: {total} boxes, {share:.4f} match an {args.reference} in-process box (same label, IoU >= 0.9, score within 0.02); largest score difference {worst_score:.4f}")
    if args.photos:
        ok &= check_photos(args, cfg, m, mean, std)
    sys.exit(0 if ok else 1)


def check_photos(args, cfg, m, mean, std):
    """JPEGs through the split against the in-process photo pipeline (fp32)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torchvision.io import decode_jpeg
    from vision_ceiling import Task  # the ceiling's own resize and mapping back

    task, name = Task(cfg), cfg["name"]
    files = sorted(args.photos.glob("*.jpg"))[:16]
    agree = total = 0
    for f in files:
        data = f.read_bytes()
        with torch.inference_mode():
            image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), device="cuda").unsqueeze(0)
            x, letterbox = task.to_input(image)
            out = m((x / 255 - mean) / std)
            answer = task.finish_photo(out, image.shape[-2:], letterbox)
        query = "" if task.segmentation else f"?score_threshold=0&max_detections={cfg['detection']['max_boxes']}"
        req = urllib.request.Request(f"{args.url}/v1/models/{name}/predict{query}", data=data, headers={"Content-Type": "image/jpeg"})
        body = json.loads(urllib.request.urlopen(req, timeout=60).read())
        if task.segmentation:
            want = float(answer[0][0])
            got = next((c["pixels"] for c in body["classes"] if c["index"] == 1), 0)
            total += 1
            agree += abs(got - want) <= 0.01 * image.shape[-1] * image.shape[-2]
        else:
            xyxy, scores, labels, _ = (t[0].cpu().numpy() for t in answer)
            xyxy = np.clip(xyxy, 0, [image.shape[-1], image.shape[-2], image.shape[-1], image.shape[-2]])
            near = np.argsort(-scores)[: args.top * 2]
            for d in body["detections"][: args.top]:
                total += 1
                best = max(near, key=lambda j: iou(d["box"], xyxy[j]) if labels[j] == d["index"] else -1)
                agree += labels[best] == d["index"] and iou(d["box"], xyxy[best]) >= 0.9 and abs(d["score"] - scores[best]) <= 0.02
    share = agree / max(total, 1)
    what = "foreground pixel counts within 1% of the photo" if task.segmentation else "boxes match (same label, IoU >= 0.9, score within 0.02)"
    print(f"{name}: {len(files)} photos through the split against in-process nvJPEG + {args.reference}: {share:.4f} of {total} {what}")
    return share >= args.min_share


if __name__ == "__main__":
    main()
