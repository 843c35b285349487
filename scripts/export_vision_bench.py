#!/usr/bin/env python3
"""Export two vision models of the size people serve, as TorchScript with a
model.toml beside each, for the GPU benchmarks (scripts/gpu_vision_ceiling).
Weights are random (seeded): timing does not depend on them, and nothing
may be downloaded. Both are scripted and saved fp32, as a user would; the
host casts, freezes and graphs them as model.toml's [optimization] says.

  segmenter  torchvision's DeepLabV3-ResNet50 with a one-channel head and a
             sigmoid: background removal's alpha mask [1, S, S] at the input's
             size S (default 512)
  detector   a CenterNet-style detector on a torchvision ResNet-50: an
             upsampling neck to stride 4, heads for class heat maps, box size
             and offset, peaks by 3x3 max-pool and top-k inside the model:
             boxes [K, 4] (cxcywh, normalised), scores [K], labels [K]

    python3 scripts/export_vision_bench.py --out /tmp/models --size 512 --max-batch-size 32
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class AlphaMatte(nn.Module):
    """DeepLabV3's logits for one class, as an alpha mask in 0..1."""

    def __init__(self):
        super().__init__()
        self.net = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=1, aux_loss=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x)["out"])


class CenterNet(nn.Module):
    """ResNet-50 features, three transposed convolutions to stride 4, and
    CenterNet's heads; top-k peaks of the class heat maps become boxes."""

    def __init__(self, classes: int, k: int):
        super().__init__()
        r = torchvision.models.resnet50(weights=None)
        self.backbone = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4)
        layers, width = [], 2048
        for out in (256, 128, 64):
            layers += [nn.ConvTranspose2d(width, out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        self.neck = nn.Sequential(*layers)

        def head(n):
            return nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(64, n, 1))

        self.heat, self.size, self.offset = head(classes), head(2), head(2)
        self.k = k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.neck(self.backbone(x))
        heat = torch.sigmoid(self.heat(f))
        b, c, h, w = heat.shape
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
        scores, index = peaks.flatten(1).topk(self.k, 1)
        labels = torch.div(index, h * w, rounding_mode="floor")
        cell = index - labels * (h * w)
        ys = torch.div(cell, w, rounding_mode="floor")
        xs = cell - ys * w
        size = self.size(f).flatten(2)
        offset = self.offset(f).flatten(2)
        pick = cell.unsqueeze(1).expand(b, 2, self.k)
        wh = torch.sigmoid(size.gather(2, pick))
        off = torch.sigmoid(offset.gather(2, pick))
        cx = (xs.to(wh.dtype) + off[:, 0]) / w
        cy = (ys.to(wh.dtype) + off[:, 1]) / h
        boxes = torch.stack([cx, cy, wh[:, 0], wh[:, 1]], 2)
        return boxes, scores, labels


def batching(max_batch: int) -> str:
    return f"[batching]\nmax_batch_size = {max_batch}\n"


def optimization(precision: str, channels_last: bool) -> str:
    return f"[optimization]\nprecision = \"{precision}\"\nchannels_last = {str(channels_last).lower()}\n"


INPUT = "[input]\nwidth = {s}\nheight = {s}\nchannels = 3\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for bench-segmenter/ and bench-detector/")
    ap.add_argument("--size", type=int, default=512, help="the models' square input size")
    ap.add_argument("--boxes", type=int, default=100, help="the detector's fixed number of boxes")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--only", choices=["segmenter", "detector"], default=None)
    ap.add_argument("--decode", choices=["gateway", "host", "auto"], default="auto",
                    help="model.toml: where JPEGs are decoded (auto: photos on the host's GPU)")
    args = ap.parse_args()
    s, opt = args.size, optimization(args.precision, not args.no_channels_last)
    decode = f'decode = "{args.decode}"\n'
    if args.only in (None, "segmenter"):
        torch.manual_seed(0)
        out = args.out / "bench-segmenter"
        out.mkdir(parents=True, exist_ok=True)
        torch.jit.script(AlphaMatte().eval()).save(str(out / "model.pt"))
        (out / "model.toml").write_text(
            f'name = "bench-segmenter"\nversion = "1"\nfile = "model.pt"\n'
            f'description = "DeepLabV3-ResNet50, one-channel alpha head, random weights (timing only)"\n'
            + decode + INPUT.format(s=s)
            + '[segmentation]\nmask = "alpha"\nlabels = ["background", "foreground"]\nresize = "stretch"\n'
            + batching(args.max_batch_size) + opt)
    if args.only in (None, "detector"):
        torch.manual_seed(0)
        out = args.out / "bench-detector"
        out.mkdir(parents=True, exist_ok=True)
        torch.jit.script(CenterNet(args.classes, args.boxes).eval()).save(str(out / "model.pt"))
        labels = ", ".join(f'"class{i}"' for i in range(args.classes))
        (out / "model.toml").write_text(
            f'name = "bench-detector"\nversion = "1"\nfile = "model.pt"\n'
            f'description = "CenterNet-style detector on ResNet-50, top-{args.boxes} in the model, random weights (timing only)"\n'
            + decode + INPUT.format(s=s)
            + f'[detection]\nlabels = [{labels}]\nmax_boxes = {args.boxes}\nbox_format = "cxcywh"\nbox_units = "normalized"\n'
            + 'resize = "letterbox"\npad_value = 114\nscore_threshold = 0.3\nmax_detections = 100\nnms = "in_model"\n'
            + batching(args.max_batch_size) + opt)


if __name__ == "__main__":
    main()
