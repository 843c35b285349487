"""The example vision models over HTTP, judged as in Python: mAP@0.5 of the
shape detector and mean IoU (background, shape) of the segmenter, from a
gateway's answers for the held-out scenes at their own sizes
(models/shapes-*/testset), against the figure scripts/train_shapes.py
measured in-process (metrics.json). tests/shapes.rs does the same on the
CPU; this runs against any gateway, e.g. a host on a GPU
(scripts/gpu_vision).

    python3 bench/vision_check.py --url http://127.0.0.1:8080 --models models
"""
import argparse
import io
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from train_shapes import mean_ap  # noqa: E402  (the same AP as training reports)


def post(url, body):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def detector(base, root):
    testset = root / "shapes-detector" / "testset"
    want = json.loads((root / "shapes-detector" / "metrics.json").read_text())
    truth = json.loads((testset / "truth.json").read_text())
    url = f"{base}/v1/models/shapes-detector/predict?score_threshold={want['min_score']}&max_detections=16"
    predictions, truths = [], []
    for entry in truth:
        answer = json.loads(post(url, (testset / entry["file"]).read_bytes()))
        predictions.append([(d["box"], d["score"], d["index"]) for d in answer["detections"]])
        truths.append([b["box"] + [b["index"]] for b in entry["boxes"]])
    return mean_ap(predictions, truths), want["map50"]


def segmenter(base, root):
    testset = root / "shapes-segmenter" / "testset"
    want = json.loads((root / "shapes-segmenter" / "metrics.json").read_text())
    truth = json.loads((testset / "truth.json").read_text())
    url = f"{base}/v1/models/shapes-segmenter/predict?format=png"
    inter, union = np.zeros(2), np.zeros(2)
    for entry in truth:
        alpha = np.asarray(Image.open(io.BytesIO(post(url, (testset / entry["file"]).read_bytes()))))
        pred, real = alpha >= 128, np.asarray(Image.open(testset / entry["mask"])) >= 128
        for c, (p, t) in enumerate([(~pred, ~real), (pred, real)]):
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
    return float(np.mean(inter / union)), want["mean_iou"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--models", type=Path, default=Path("models"))
    args = ap.parse_args()
    ok = True
    for name, check in [("shapes-detector mAP@0.5", detector), ("shapes-segmenter mean IoU", segmenter)]:
        got, want = check(args.url, args.models)
        close = abs(got - want) <= 0.02
        ok &= close
        print(f"{name}: over HTTP {got:.4f}, in Python {want:.4f} ({'within' if close else 'NOT within'} 0.02)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
