#!/usr/bin/env python3
"""Plots the split's images/s against clients for JPEGs of several sizes,
with in-process ceilings of the same run as lines (docs/benchmarks.md,
"Real photos"): bench/ceiling.py's (`--ceiling`, pixels in) and
bench/photo_ceiling.py's (`--photo-ceiling`, the same photos decoded,
resized and run in one process). Input: the rows scripts/gpu_photos and
scripts/gpu_host_decode write.

    python3 bench/plot_photos.py --rows a.jsonl b.jsonl --ceiling c.jsonl --out plot.png
    python3 bench/plot_photos.py --rows a.jsonl --photo-ceiling 1080p=p.jsonl --out plot.png
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=Path, nargs="+", required=True)
    ap.add_argument("--ceiling", type=Path)
    ap.add_argument("--photo-ceiling", nargs="*", default=[], help="NAME=photo_ceiling.py rows")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="ResNet-50 fp16-cl on one H200, 4 gateways, JPEG in")
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for path in args.rows:
        rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        for label in sorted({r["label"] for r in rows}):
            rs = sorted((r for r in rows if r["label"] == label), key=lambda r: r["concurrency"])
            ax.plot([r["concurrency"] for r in rs], [r["images_per_second"] for r in rs], marker="o", label=label)
    if args.ceiling:
        ceiling = [json.loads(l) for l in args.ceiling.read_text().splitlines() if l.strip()]
        best = max((c for c in ceiling if c["label"].endswith("pipeline16")), key=lambda c: c["img_per_s"])
        ax.axhline(best["img_per_s"], color="gray", linestyle="--", label=f"in-process ceiling (pipeline16, bs {best['batch']})")
    for style, named in zip([":", "-.", "--"], args.photo_ceiling):
        name, path = named.split("=", 1)
        rows = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
        best = max(rows, key=lambda r: r["model_img_s"])
        ax.axhline(best["model_img_s"], color="black", linestyle=style,
                   label=f"in-process PyTorch, {name} photos (nvJPEG + resize + model, bs {best['batch']})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("clients")
    ax.set_ylabel("images / s")
    ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
