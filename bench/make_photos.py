#!/usr/bin/env python3
"""Synthetic photos for the decode benchmarks: smooth colour fields with
per-pixel texture, quality 90 (about a real photo's bytes per pixel: 430 KB
at 1920x1080, 2.6 MB at 4032x3024). Same seed, same files.

    python3 bench/make_photos.py --out photos --size 1920x1080 --count 24
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", required=True, help="WIDTHxHEIGHT")
    ap.add_argument("--count", type=int, default=24)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(args.count):
        coarse = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        noisy = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(args.out / f"{i:03}.jpg", quality=90)


if __name__ == "__main__":
    main()
