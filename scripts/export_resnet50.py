#!/usr/bin/env python3
"""Export torchvision's ResNet-50 as TorchScript with a model.toml beside it.

The benchmark model (GPU runs): weights are random (seeded) because timing
does not depend on them and nothing may be downloaded; the labels are
ImageNet's 1000 class names, which torchvision ships in its weights
metadata without downloading the weights. Needs torch and torchvision.

    python3 scripts/export_resnet50.py --out models/resnet50
    python3 scripts/export_resnet50.py --out models/resnet50-fp16 --precision fp16 --channels-last
"""
import argparse
from pathlib import Path

import torch
import torchvision


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("models/resnet50"))
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-queue-delay-us", type=int, default=0)
    ap.add_argument("--batch-sizes", default=None,
                    help="model.toml [batching] batch_sizes, e.g. 1,2,4,8,16 (default: the host's own shapes)")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--channels-last", action="store_true",
                    help="store the weights channels-last (NHWC) and feed the input so")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="model.toml: time cuDNN's kernels per batch shape at warm-up (slow start)")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="model.toml: run every batch eagerly")
    ap.add_argument("--no-freeze", action="store_true", help="model.toml: run the module as saved")
    ap.add_argument("--all-shapes-before-ready", action="store_true",
                    help="model.toml: warm up every batch shape before READY (none after)")
    ap.add_argument("--decode", choices=["gateway", "host", "auto"], default="gateway",
                    help="model.toml: where JPEGs are decoded (host/auto: nvJPEG on the host's GPU)")
    ap.add_argument("--decode-threads", type=int, default=None,
                    help="model.toml [host_decode] threads: nvJPEG decoders a batch is split over")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    scripted = torch.jit.script(model)
    args.out.mkdir(parents=True, exist_ok=True)
    scripted.save(str(args.out / "model.pt"))
    labels = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    quoted = ",\n    ".join('"' + l.replace('"', "'") + '"' for l in labels)
    b = args.max_batch_size
    (args.out / "model.toml").write_text(f"""# ResNet-50 (torchvision architecture, random seeded weights) for benchmarks.
name = "resnet50"
version = "1"
file = "model.pt"
description = "torchvision ResNet-50, TorchScript, random weights (timing only)"
decode = "{args.decode}"

[input]
width = 224
height = 224
channels = 3
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[output]
kind = "classification"
labels = [
    {quoted}
]

[batching]
max_batch_size = {b}
{f"batch_sizes = [{args.batch_sizes}]" if args.batch_sizes else "# batch_sizes: the host's default shapes up to max_batch_size"}
max_queue_delay_us = {args.max_queue_delay_us}

[optimization]
precision = "{args.precision}"
channels_last = {str(args.channels_last).lower()}
cudnn_benchmark = {str(args.cudnn_benchmark).lower()}
cuda_graphs = {str(not args.no_cuda_graphs).lower()}
freeze = {str(not args.no_freeze).lower()}
warm_up_after_ready = {str(not args.all_shapes_before_ready).lower()}
""" + (f"""
[host_decode]
threads = {args.decode_threads}
""" if args.decode_threads else ""))
    print(f"wrote {args.out}/model.pt and model.toml")


if __name__ == "__main__":
    main()
