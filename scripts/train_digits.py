#!/usr/bin/env python3
"""Train the embedded default model: a small CNN on scikit-learn's digits.

The data set ships inside scikit-learn (1,797 8x8 images, no download). The
script is deterministic (fixed seeds, single thread) and writes, under --out:

  model.pt        TorchScript, input float32 [N, 1, 32, 32] normalised with
                  the config's mean/std, output logits [N, 10]
  model.toml      the model config the host reads (see docs/configuration.md)
  metrics.json    held-out accuracy per presentation, measured here in Python
  testset/        the held-out images (never trained on) as PNG files named
                  <index>_<label>.png, in several presentations the gateway
                  must cope with: gray8 (the native 8x8), rgb64 (dark ink on
                  light, 64x64 RGB), inv28 (light on dark, 28x28 gray),
                  rgba48 (dark ink on a transparent background)

Users send what they have, so training augments: random affine (shift,
scale, rotation), random polarity (light-on-dark or dark-on-light), random
ink/background levels, blur and noise.
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SIZE = 32
MEAN, STD = 0.5, 0.5
SEED = 20261122


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(1, 32), block(32, 32), nn.MaxPool2d(2),   # 16x16
            block(32, 64), block(64, 64), nn.MaxPool2d(2),  # 8x8
            block(64, 128), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def upsample(images8):
    """[N, 8, 8] in [0, 1] -> [N, 1, 32, 32], ink bright on dark."""
    x = torch.as_tensor(images8, dtype=torch.float32).unsqueeze(1)
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def augment(x, gen):
    """Random presentation of a batch of [N,1,32,32] ink-bright images in [0,1]."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * 2 * 0.25        # about +-14 degrees
    scale = 0.8 + torch.rand(n, generator=gen) * 0.4                # 0.8 .. 1.2
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 2 * 0.15      # +-15% of the frame
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    # Blur some of them: other resize filters and soft pens look like this.
    blur = torch.rand(n, generator=gen) < 0.3
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :]) / 16
        x[blur] = F.conv2d(x[blur], k.view(1, 1, 3, 3), padding=1)
    # Ink and background levels, then polarity.
    ink = 0.55 + torch.rand(n, 1, 1, 1, generator=gen) * 0.45
    bg = torch.rand(n, 1, 1, 1, generator=gen) * 0.25
    x = bg + x.clamp(0, 1) * (ink - bg)
    invert = (torch.rand(n, generator=gen) < 0.5).view(n, 1, 1, 1)
    x = torch.where(invert, 1 - x, x)
    x = x + torch.randn(x.shape, generator=gen) * 0.03
    return x.clamp(0, 1)


def normalise(x):
    return (x - MEAN) / STD


def evaluate(model, x, y):
    model.eval()
    with torch.no_grad():
        pred = model(normalise(x)).argmax(1)
    return (pred == y).float().mean().item()


def save_png(array_u8, path, mode):
    Image.fromarray(array_u8, mode=None).convert(mode).save(path) if mode != "RGBA" else \
        Image.fromarray(array_u8, mode="RGBA").save(path)


def write_testset(out, images8, labels):
    """The held-out set as PNG files, in four presentations."""
    root = out / "testset"
    for kind in ("gray8", "rgb64", "inv28", "rgba48"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images8, labels)):
        u8 = (img * 255).round().astype(np.uint8)            # ink bright on dark
        name = f"{i:03d}_{label}.png"
        Image.fromarray(u8, mode="L").save(root / "gray8" / name)
        big = Image.fromarray(255 - u8, mode="L").resize((64, 64), Image.BILINEAR)
        big.convert("RGB").save(root / "rgb64" / name)
        Image.fromarray(u8, mode="L").resize((28, 28), Image.BICUBIC).save(root / "inv28" / name)
        alpha = np.asarray(Image.fromarray(u8, mode="L").resize((48, 48), Image.BILINEAR))
        rgba = np.zeros((48, 48, 4), dtype=np.uint8)
        rgba[..., 3] = alpha                                 # black ink, transparent paper
        Image.fromarray(rgba, mode="RGBA").save(root / "rgba48" / name)


def write_config(out, epochs, accuracy):
    labels = ", ".join(f'"{d}"' for d in range(10))
    (out / "model.toml").write_text(f"""# Model config for the embedded default model, written by scripts/train_digits.py.
name = "digits"
version = "1"
file = "model.pt"
description = "Small CNN trained on scikit-learn's handwritten digits ({epochs} epochs, held-out accuracy {accuracy:.4f})"

[input]
width = {SIZE}
height = {SIZE}
channels = 1            # 1 = grayscale, 3 = RGB
mean = [{MEAN}]
std = [{STD}]

[output]
kind = "classification" # logits, softmax taken by the host
labels = [{labels}]

[batching]
max_batch_size = 32
batch_sizes = [1, 2, 4, 8, 16, 32]  # shapes the model runs at; batches are padded up
""")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models" / "digits")
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)

    digits = load_digits()
    images8 = digits.images / 16.0
    x_tr8, x_te8, y_tr, y_te = train_test_split(
        images8, digits.target, test_size=0.2, random_state=0, stratify=digits.target)
    x_tr, x_te = upsample(x_tr8), upsample(x_te8)
    y_tr, y_te = torch.as_tensor(y_tr), torch.as_tensor(y_te)

    model = DigitsNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = (len(x_tr) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.epochs * steps_per_epoch)
    started = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for start in range(0, len(x_tr), 64):
            idx = order[start:start + 64]
            xb = normalise(augment(x_tr[idx], gen))
            loss = F.cross_entropy(model(xb), y_tr[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if epoch % 10 == 9 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} "
                  f"held-out {evaluate(model, x_te, y_te):.4f} ({time.time() - started:.0f}s)", flush=True)

    model.eval()
    metrics = {
        "held_out_images": len(y_te),
        "accuracy_light_on_dark": evaluate(model, x_te, y_te),
        "accuracy_dark_on_light": evaluate(model, 1 - x_te, y_te),
        "train_seconds": round(time.time() - started, 1),
        "seed": SEED,
        "epochs": args.epochs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(model)
    scripted.save(str(args.out / "model.pt"))
    write_config(args.out, args.epochs, metrics["accuracy_light_on_dark"])
    write_testset(args.out, x_te8, y_te.tolist())
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
