#!/usr/bin/env python3
"""Train the two example vision models on synthetic shape scenes.

Circles, squares and triangles of random size and colour, one to four per
scene, on textured backgrounds (gradients, stripes, checks, noise), drawn
here with fixed seeds (no download). Scenes are drawn at their own size
(any aspect ratio) and brought to the model's 64x64 input exactly as the
gateway does: bilinear resize, letterboxed (detector, pad 114) or
stretched (segmenter). Writes, under --out:

  shapes-detector/   model.pt: float32 [N, 3, 64, 64] -> (boxes [N, 16, 4]
                     cx, cy, w, h normalised to 0..1, scores [N, 16],
                     labels [N, 16] int64): a CenterNet-style heat map whose
                     3x3 max-pool peak picking replaces NMS (no NMS needed)
  shapes-segmenter/  model.pt: float32 [N, 3, 64, 64] -> alpha [N, 1, 64, 64]
                     (probability that a pixel belongs to a shape)
  each with model.toml, metrics.json (held-out mAP@0.5 / mean IoU, measured
  here the way the gateway answers: at the held-out images' own sizes) and
  testset/: held-out scenes at sizes other than the input (160x100, 78x120,
  200x140, 110x170) as PNG, with truth.json (boxes in those pixels) and,
  for the segmenter, the true masks as PNG.
"""
import argparse
import json
import math
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

SIZE = 64
STRIDE = 4
GRID = SIZE // STRIDE
K = 16
PAD = 114
MEAN, STD = 0.5, 0.25
LABELS = ["circle", "square", "triangle"]
TEST_SIZES = [(160, 100), (78, 120), (200, 140), (110, 170)]
SEED = 20261202


def background(rng, w, h):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = rng.uniform(30, 225, 3)[None, None, :] + (xx / w)[..., None] * rng.uniform(-50, 50, 3) \
        + (yy / h)[..., None] * rng.uniform(-50, 50, 3)
    kind = rng.integers(3)
    if kind == 0:
        a, period = rng.uniform(0, math.pi), rng.uniform(3, 14)
        wave = np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period)
        img = img + wave[..., None] * rng.uniform(5, 35, 3)
    elif kind == 1:
        cell = rng.uniform(3, 12)
        check = ((xx // cell + yy // cell) % 2) * 2 - 1
        img = img + check[..., None] * rng.uniform(5, 30, 3)
    return img + rng.normal(0, rng.uniform(1, 10), (h, w, 3))


def coverage(kind, cx, cy, r, xs, ys):
    """Fraction of each pixel (2x2 samples) inside the shape; xs, ys: pixel indices."""
    cov = np.zeros((len(ys), len(xs)), np.float32)
    for oy in (0.25, 0.75):
        for ox in (0.25, 0.75):
            x = (xs[None, :] + ox) - cx
            y = (ys[:, None] + oy) - cy
            if kind == 0:
                inside = x * x + y * y <= r * r
            elif kind == 1:
                inside = (np.abs(x) <= r) & (np.abs(y) <= r)
            else:  # apex up, base at cy + r
                inside = (y >= -r) & (y <= r) & (np.abs(x) <= (y + r) / 2)
            cov += inside
    return cov / 4


def scene(rng, w, h):
    """An image (h, w, 3) uint8, its boxes [(x0, y0, x1, y1, label)] and its mask (h, w) float."""
    img = background(rng, w, h)
    mask = np.zeros((h, w), np.float32)
    boxes = []
    for _ in range(rng.integers(1, 5)):
        for _try in range(30):
            r = rng.uniform(0.1, 0.22) * min(w, h)
            cx, cy = rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)
            box = (cx - r, cy - r, cx + r, cy + r)
            if all(box[2] + 2 < b[0] or b[2] + 2 < box[0] or box[3] + 2 < b[1] or b[3] + 2 < box[1] for b in boxes):
                break
        else:
            continue
        kind = int(rng.integers(3))
        x0, x1 = max(0, int(box[0]) - 1), min(w, int(box[2]) + 2)
        y0, y1 = max(0, int(box[1]) - 1), min(h, int(box[3]) + 2)
        cov = coverage(kind, cx, cy, r, np.arange(x0, x1), np.arange(y0, y1))
        local = img[y0:y1, x0:x1].reshape(-1, 3).mean(0)
        while True:
            colour = rng.uniform(0, 255, 3)
            if np.abs(colour - local).sum() > 150:
                break
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - cov[..., None]) + colour * cov[..., None]
        mask[y0:y1, x0:x1] = np.maximum(mask[y0:y1, x0:x1], cov)
        boxes.append((*box, kind))
    return np.clip(img, 0, 255).round().astype(np.uint8), boxes, mask


def letterbox_geometry(w, h):
    """(content width, content height, pad x, pad y), as the gateway computes them."""
    s = min(SIZE / w, SIZE / h)
    nw, nh = max(1, min(SIZE, int(w * s + 0.5))), max(1, min(SIZE, int(h * s + 0.5)))
    return nw, nh, (SIZE - nw) // 2, (SIZE - nh) // 2


def letterbox(img):
    h, w = img.shape[:2]
    nw, nh, px, py = letterbox_geometry(w, h)
    out = np.full((SIZE, SIZE, 3), PAD, np.uint8)
    out[py:py + nh, px:px + nw] = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    return out


def stretch(img):
    return np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR))


def resize_plane(plane, w, h):
    return np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))


def random_size(rng):
    aspect = math.exp(rng.uniform(math.log(0.55), math.log(1.8)))
    long = rng.uniform(64, 180)
    w, h = (long, long / aspect) if aspect >= 1 else (long * aspect, long)
    return max(24, int(w)), max(24, int(h))


def normalise(batch_u8):
    return (torch.from_numpy(np.ascontiguousarray(batch_u8)).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD


def block(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Detector(nn.Module):
    """Backbone to a stride-4 map: 3 class heat maps, 2 centre offsets, 2 sizes."""

    def __init__(self):
        super().__init__()
        self.s4 = nn.Sequential(block(3, 16, 2), block(16, 32, 2), block(32, 32))   # 16x16
        self.s8 = nn.Sequential(block(32, 48, 2), block(48, 48))                     # 8x8
        self.s16 = nn.Sequential(block(48, 64, 2), block(64, 64))                    # 4x4
        self.fuse8 = nn.Sequential(nn.Conv2d(48 + 64, 48, 1), block(48, 48))
        self.fuse4 = nn.Sequential(nn.Conv2d(32 + 48, 32, 1), block(32, 32))
        self.head = nn.Conv2d(32, 7, 1)
        self.head.bias.data[:3] = -2.2
        # Attributes, not globals, so that TorchScript sees them.
        self.k, self.grid, self.stride, self.size = K, GRID, STRIDE, SIZE

    def raw(self, x):
        f4 = self.s4(x)
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        f8 = self.fuse8(torch.cat([f8, F.interpolate(f16, scale_factor=2.0, mode="nearest")], 1))
        f4 = self.fuse4(torch.cat([f4, F.interpolate(f8, scale_factor=2.0, mode="nearest")], 1))
        return self.head(f4)

    def forward(self, x):
        out = self.raw(x)
        b = out.shape[0]
        heat = torch.sigmoid(out[:, :3])
        # A peak is its 3x3 neighbourhood's maximum: this replaces NMS.
        heat = heat * (F.max_pool2d(heat, 3, 1, 1) == heat).to(heat.dtype)
        grid, k = self.grid, self.k
        scores, index = heat.reshape(b, -1).topk(k)
        labels = torch.div(index, grid * grid, rounding_mode="floor")
        cell = index % (grid * grid)
        ys = torch.div(cell, grid, rounding_mode="floor").to(out.dtype)
        xs = (cell % grid).to(out.dtype)
        reg = out[:, 3:7].reshape(b, 4, -1)
        pick = cell.unsqueeze(1).expand(b, 4, k)
        r = reg.gather(2, pick)
        cx = (xs + r[:, 0]) * self.stride / self.size
        cy = (ys + r[:, 1]) * self.stride / self.size
        w = r[:, 2] * 16.0 / self.size
        h = r[:, 3] * 16.0 / self.size
        return torch.stack([cx, cy, w, h], 2), scores, labels


class Segmenter(nn.Module):
    """A small U-Net at half resolution; logits upsampled to the input's size."""

    def __init__(self):
        super().__init__()
        self.e1 = nn.Sequential(block(3, 16, 2), block(16, 16))     # 32x32
        self.e2 = nn.Sequential(block(16, 32, 2), block(32, 32))    # 16x16
        self.e3 = nn.Sequential(block(32, 48, 2), block(48, 48))    # 8x8
        self.d2 = nn.Sequential(nn.Conv2d(48 + 32, 32, 1), block(32, 32))
        self.d1 = nn.Sequential(nn.Conv2d(32 + 16, 16, 1), block(16, 16))
        self.out = nn.Conv2d(16, 1, 1)

    def logits(self, x):
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        d2 = self.d2(torch.cat([e2, F.interpolate(e3, scale_factor=2.0, mode="nearest")], 1))
        d1 = self.d1(torch.cat([e1, F.interpolate(d2, scale_factor=2.0, mode="nearest")], 1))
        return F.interpolate(self.out(d1), scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, x):
        return torch.sigmoid(self.logits(x))


def detection_targets(boxes_in):
    """CenterNet targets at stride 4 for boxes in input pixels."""
    heat = np.zeros((3, GRID, GRID), np.float32)
    reg = np.zeros((4, GRID, GRID), np.float32)
    mask = np.zeros((GRID, GRID), np.float32)
    gy, gx = np.mgrid[0:GRID, 0:GRID].astype(np.float32)
    for x0, y0, x1, y1, label in boxes_in:
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        ix, iy = min(GRID - 1, int(cx)), min(GRID - 1, int(cy))
        sigma = max(0.6, max(x1 - x0, y1 - y0) / STRIDE / 6)
        g = np.exp(-((gx - ix) ** 2 + (gy - iy) ** 2) / (2 * sigma * sigma))
        heat[label] = np.maximum(heat[label], g)
        reg[:, iy, ix] = (cx - ix, cy - iy, (x1 - x0) / 16.0, (y1 - y0) / 16.0)
        mask[iy, ix] = 1
    return heat, reg, mask


def to_letterbox(boxes, w, h):
    nw, nh, px, py = letterbox_geometry(w, h)
    return [(x0 * nw / w + px, y0 * nh / h + py, x1 * nw / w + px, y1 * nh / h + py, l) for x0, y0, x1, y1, l in boxes]


def focal(pred_logits, target):
    p = torch.sigmoid(pred_logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def train_detector(rng, n_train, steps):
    xs, heats, regs, masks = [], [], [], []
    for _ in range(n_train):
        w, h = random_size(rng)
        img, boxes, _ = scene(rng, w, h)
        xs.append(letterbox(img))
        t = detection_targets(to_letterbox(boxes, w, h))
        heats.append(t[0]), regs.append(t[1]), masks.append(t[2])
    x = normalise(np.stack(xs))
    heat, reg, mask = (torch.from_numpy(np.stack(a)) for a in (heats, regs, masks))
    model = Detector()
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, n_train, (32,), generator=gen)
        out = model.raw(x[idx])
        m = mask[idx].unsqueeze(1)
        reg_loss = (F.l1_loss(out[:, 3:7], reg[idx], reduction="none") * m).sum() / m.sum().clamp(min=1)
        loss = focal(out[:, :3], heat[idx]) + reg_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"  detector step {step}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def train_segmenter(rng, n_train, steps):
    xs, ys = [], []
    for _ in range(n_train):
        w, h = random_size(rng)
        img, _, mask = scene(rng, w, h)
        xs.append(stretch(img))
        ys.append(resize_plane(mask, SIZE, SIZE))
    x = normalise(np.stack(xs))
    y = torch.from_numpy(np.stack(ys)).unsqueeze(1).clamp(0, 1)
    model = Segmenter()
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(SEED + 1)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, n_train, (16,), generator=gen)
        logits = model.logits(x[idx])
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * y[idx]).sum() + 1) / (p.sum() + y[idx].sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y[idx]) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"  segmenter step {step}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mean_ap(predictions, truths, classes=3, threshold=0.5):
    """VOC all-point AP@0.5 per class, averaged; the same as tests/shapes.rs."""
    aps = []
    for c in range(classes):
        dets = [(s, i, b) for i, p in enumerate(predictions) for (b, s, l) in p if l == c]
        dets.sort(key=lambda d: -d[0])
        gts = {i: [t[:4] for t in truth if t[4] == c] for i, truth in enumerate(truths)}
        used = {i: [False] * len(g) for i, g in gts.items()}
        total = sum(len(g) for g in gts.values())
        tp = []
        for _s, i, b in dets:
            best, j = 0.0, -1
            for k, g in enumerate(gts[i]):
                v = iou(b, g)
                if v > best:
                    best, j = v, k
            hit = best >= threshold and not used[i][j]
            if hit:
                used[i][j] = True
            tp.append(1 if hit else 0)
        tp = np.array(tp, np.float64)
        ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
        recall = ctp / max(total, 1)
        precision = ctp / np.maximum(ctp + cfp, 1e-9)
        mrec = np.concatenate([[0], recall, [1]])
        mpre = np.concatenate([[0], precision, [0]])
        for k in range(len(mpre) - 2, -1, -1):
            mpre[k] = max(mpre[k], mpre[k + 1])
        aps.append(float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:])))
    return float(np.mean(aps))


def test_scenes(rng, n):
    return [(TEST_SIZES[i % len(TEST_SIZES)], scene(rng, *TEST_SIZES[i % len(TEST_SIZES)])) for i in range(n)]


def evaluate_detector(model, tests, min_score):
    predictions = []
    with torch.no_grad():
        for (w, h), (img, _, _) in tests:
            boxes, scores, labels = model(normalise(letterbox(img)[None]))
            nw, nh, px, py = letterbox_geometry(w, h)
            found = []
            for (cx, cy, bw, bh), s, l in zip(boxes[0].tolist(), scores[0].tolist(), labels[0].tolist()):
                if s < min_score:
                    continue
                x0, x1 = (cx - bw / 2) * SIZE, (cx + bw / 2) * SIZE
                y0, y1 = (cy - bh / 2) * SIZE, (cy + bh / 2) * SIZE
                back = [min(max((x0 - px) * w / nw, 0), w), min(max((y0 - py) * h / nh, 0), h),
                        min(max((x1 - px) * w / nw, 0), w), min(max((y1 - py) * h / nh, 0), h)]
                found.append((back, s, l))
            predictions.append(found)
    return mean_ap(predictions, [t[1][1] for t in tests])


def evaluate_segmenter(model, tests):
    inter, union = np.zeros(2), np.zeros(2)
    with torch.no_grad():
        for (w, h), (img, _, mask) in tests:
            alpha = model(normalise(stretch(img)[None]))[0, 0].numpy()
            pred = resize_plane(alpha, w, h) >= 0.5
            truth = mask >= 0.5
            for c, (p, t) in enumerate([(~pred, ~truth), (pred, truth)]):
                inter[c] += (p & t).sum()
                union[c] += (p | t).sum()
    return float(np.mean(inter / union))


def save_testset(out, tests, with_masks):
    (out / "testset").mkdir(parents=True, exist_ok=True)
    truth = []
    for i, ((w, h), (img, boxes, mask)) in enumerate(tests):
        name = f"{i:03d}_{w}x{h}.png"
        Image.fromarray(img).save(out / "testset" / name)
        entry = {"file": name, "width": w, "height": h,
                 "boxes": [{"box": [round(v, 3) for v in b[:4]], "index": b[4], "label": LABELS[b[4]]} for b in boxes]}
        if with_masks:
            entry["mask"] = f"{i:03d}_{w}x{h}_mask.png"
            Image.fromarray(((mask >= 0.5) * 255).astype(np.uint8)).save(out / "testset" / entry["mask"])
        truth.append(entry)
    (out / "testset" / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")


DETECTOR_TOML = """name = "shapes-detector"
version = "1"
file = "model.pt"
description = "Circles, squares and triangles on textured backgrounds (scripts/train_shapes.py); held-out mAP@0.5 {score:.3f}"
[input]
width = 64
height = 64
channels = 3
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[detection]
labels = ["circle", "square", "triangle"]
max_boxes = 16              # the model returns boxes [16, 4], scores [16], labels [16]
box_format = "cxcywh"
box_units = "normalized"
resize = "letterbox"
pad_value = 114
score_threshold = 0.3       # defaults for ?score_threshold= and ?max_detections=
max_detections = 16
nms = "in_model"            # peaks of a heat map (3x3 max-pool): no overlapping boxes to suppress
[batching]
max_batch_size = 8
batch_sizes = [1, 2, 4, 8]
"""

SEGMENTER_TOML = """name = "shapes-segmenter"
version = "1"
file = "model.pt"
description = "Shape vs background on textured scenes (scripts/train_shapes.py); held-out mean IoU {score:.3f}"
[input]
width = 64
height = 64
channels = 3
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[segmentation]
mask = "alpha"              # the model returns mask [1, 64, 64]: a shape's probability per pixel
labels = ["background", "shape"]
resize = "stretch"
[batching]
max_batch_size = 8
batch_sizes = [1, 2, 4, 8]
"""


def make_detector(out_root, n_tests):
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    started = time.time()
    torch.jit.script(Detector())  # fails fast, before training, if it cannot be scripted
    detector = train_detector(np.random.default_rng(SEED), 3000, 800)
    tests = test_scenes(np.random.default_rng(SEED + 7), n_tests)
    det_map = evaluate_detector(detector, tests, 0.05)
    print(f"detector: held-out mAP@0.5 {det_map:.4f}", flush=True)
    out = out_root / "shapes-detector"
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.script(detector).save(str(out / "model.pt"))
    (out / "model.toml").write_text(DETECTOR_TOML.format(score=det_map))
    save_testset(out, tests, False)
    (out / "metrics.json").write_text(json.dumps({"map50": det_map, "min_score": 0.05, "images": len(tests)}) + "\n")
    print(f"detector: held-out mAP@0.5 {det_map:.4f} on {len(tests)} scenes ({time.time() - started:.0f} s)", flush=True)


def make_segmenter(out_root, n_tests):
    torch.manual_seed(SEED + 1)
    torch.set_num_threads(1)
    started = time.time()
    torch.jit.script(Segmenter())
    segmenter = train_segmenter(np.random.default_rng(SEED + 3), 1500, 500)
    tests = test_scenes(np.random.default_rng(SEED + 11), n_tests)
    miou = evaluate_segmenter(segmenter, tests)
    out = out_root / "shapes-segmenter"
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.script(segmenter).save(str(out / "model.pt"))
    (out / "model.toml").write_text(SEGMENTER_TOML.format(score=miou))
    save_testset(out, tests, True)
    (out / "metrics.json").write_text(json.dumps({"mean_iou": miou, "images": len(tests)}) + "\n")
    print(f"segmenter: held-out mean IoU {miou:.4f} on {len(tests)} scenes ({time.time() - started:.0f} s)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--tests", type=int, default=120)
    args = parser.parse_args()
    # One process per model, one thread each: on 2 cores this is much
    # faster than two threads per model one after the other (small convs
    # scale badly across threads), and each result stays deterministic.
    jobs = [mp.Process(target=f, args=(args.out, args.tests)) for f in (make_detector, make_segmenter)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    failed = [job.exitcode for job in jobs if job.exitcode != 0]
    if failed:
        raise SystemExit(f"training failed (exit codes {failed})")


if __name__ == "__main__":
    main()
