#!/usr/bin/env python3
"""Train the example iterative model: class-conditional diffusion on scikit-learn's digits.

A denoising diffusion model (DDPM, noise prediction) over the 8x8 digits
that ship inside scikit-learn (no download), conditioned on the class with
classifier-free guidance. Deterministic (fixed seeds, fixed threads).
Writes, under --out:

  model.pt      TorchScript with three exported methods, which the host
                calls as a loop (docs/jobs.md):
                  start(params int64 [N, 2] = (class, seed)) -> state float32 [N, S]
                  step(state [N, S], index int64 [N], steps int64 [N]) -> state
                  finish(state [N, S]) -> image uint8 [N, 1, 32, 32],
                    dark ink on light paper, as the digits classifier expects
                Rows are independent: the noise of a row is a pure function of
                its seed and step (a counter-based hash, not torch's global
                generator), so a job draws the same digit alone or batched.
  model.toml    the host's config, with an [iterative] table
  metrics.json  per-class accuracy of generated digits, judged here by the
                digits classifier (models/digits) when it is present
"""
import argparse
import json
import math
import time
from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

SEED = 20261207
T = 200               # diffusion timesteps; a job runs at most this many steps
GUIDANCE = 2.0        # classifier-free guidance scale used by step()
NULL_CLASS = 10       # the "no class" embedding, trained with label dropout
PIXELS = 64           # 8x8
OUT_SIZE = 32
BATCH = 128
# State columns: the 64 pixels, the class, the seed's two 16-bit halves
# (float32 holds integers exactly only up to 2^24, so the seed is split).
STATE = PIXELS + 3


def cosine_alpha_bar(steps):
    s = 0.008
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    ab = f[1:] / f[0]
    return ab.clamp(min=1e-5).float()


class Denoiser(nn.Module):
    def __init__(self, hidden=256):
        super().__init__()
        self.class_emb = nn.Embedding(NULL_CLASS + 1, hidden)
        self.time_mlp = nn.Sequential(nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(PIXELS, hidden)
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden * 2), nn.SiLU(), nn.Linear(hidden * 2, hidden))
            for _ in range(4)
        ])
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, PIXELS))

    def forward(self, x, t, cls):
        half = 32
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
        args = t.float().unsqueeze(1) * freqs.unsqueeze(0)
        temb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        h = self.inp(x) + self.time_mlp(temb) + self.class_emb(cls)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def hash32(x):
    """A 32-bit integer mix kept below 2^63 at every product (int64 maths)."""
    m = 0xFFFFFFFF
    x = ((x >> 16) ^ x) * 0x45D9F3B & m
    x = ((x >> 16) ^ x) * 0x45D9F3B & m
    x = (x >> 16) ^ x
    return x


class Sampler(nn.Module):
    """The iterative interface the host drives (see the module docstring)."""

    def __init__(self, denoiser, alpha_bar):
        super().__init__()
        self.denoiser = denoiser
        self.register_buffer("alpha_bar", alpha_bar)
        # TorchScript reads module attributes, not Python globals.
        self.pixels = PIXELS
        self.null_class = NULL_CLASS
        self.guidance = GUIDANCE
        self.out_size = OUT_SIZE
        self.t_max = T

    def noise(self, state, counter):
        """Standard normal [N, 64] from each row's seed and a counter."""
        n = state.shape[0]
        seed = state[:, self.pixels + 1].long() * 65536 + state[:, self.pixels + 2].long()
        pix = torch.arange(self.pixels, dtype=torch.long, device=state.device).unsqueeze(0)
        base = hash32((seed.unsqueeze(1) * 7919 + counter.unsqueeze(1) * 104729) & 0xFFFFFFFF)
        k1 = hash32((base + pix * 2 + 1) & 0xFFFFFFFF)
        k2 = hash32((base * 31 + pix * 2 + 2) & 0xFFFFFFFF)
        u1 = (k1.float() + 1.0) / 4294967297.0
        u2 = k2.float() / 4294967296.0
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)

    @torch.jit.export
    def start(self, params):
        cls = params[:, 0].clamp(0, 9).float().unsqueeze(1)
        seed = params[:, 1] & 0xFFFFFFFF
        hi = (seed // 65536).float().unsqueeze(1)
        lo = (seed % 65536).float().unsqueeze(1)
        state = torch.cat([torch.zeros(params.shape[0], self.pixels, device=params.device), cls, hi, lo], dim=1)
        counter = torch.full([params.shape[0]], 1 << 20, dtype=torch.long, device=params.device)
        x = self.noise(state, counter)
        return torch.cat([x, cls, hi, lo], dim=1)

    def timestep(self, index, steps):
        # A job of `steps` steps: evenly spaced timesteps from t_max - 1 down to 0.
        denom = (steps - 1).clamp(min=1)
        return torch.round((self.t_max - 1) * (1.0 - index.float() / denom.float())).long().clamp(0, self.t_max - 1)

    @torch.jit.export
    def step(self, state, index, steps):
        x = state[:, :self.pixels]
        cond = state[:, self.pixels:]
        cls = state[:, self.pixels].long()
        t = self.timestep(index, steps)
        last = index + 1 >= steps
        t_prev = self.timestep((index + 1).clamp(max=self.t_max), steps)
        n = x.shape[0]
        both = self.denoiser(torch.cat([x, x]), torch.cat([t, t]),
                             torch.cat([cls, torch.full_like(cls, self.null_class)]))
        eps_c, eps_u = both[:n], both[n:]
        eps = eps_u + self.guidance * (eps_c - eps_u)
        ab = self.alpha_bar[t].unsqueeze(1)
        ab_prev = torch.where(last, torch.ones_like(t, dtype=torch.float32), self.alpha_bar[t_prev]).unsqueeze(1)
        x0 = ((x - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)).clamp(-1, 1)
        eps = (x - torch.sqrt(ab) * x0) / torch.sqrt(1 - ab)
        var = ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0)
        sigma = torch.sqrt(var)
        z = self.noise(state, index)
        x_prev = torch.sqrt(ab_prev) * x0 + torch.sqrt((1 - ab_prev - var).clamp(min=0)) * eps + sigma * z
        x_prev = torch.where(last.unsqueeze(1), x0, x_prev)
        return torch.cat([x_prev, cond], dim=1)

    @torch.jit.export
    def finish(self, state):
        ink = ((state[:, :self.pixels] + 1) / 2).clamp(0, 1).view(-1, 1, 8, 8)
        big = F.interpolate(ink, size=[self.out_size, self.out_size], mode="bilinear", align_corners=False)
        paper = 1.0 - big                                   # dark ink on light paper
        return (paper * 255).round().clamp(0, 255).to(torch.uint8)

    def forward(self, params):
        # Unused by the host (it calls the three methods); kept so the module
        # also runs as a whole: every step of the model's own length.
        state = self.start(params)
        n = params.shape[0]
        steps = torch.full([n], self.t_max, dtype=torch.long, device=params.device)
        for i in range(self.t_max):
            state = self.step(state, torch.full([n], i, dtype=torch.long, device=params.device), steps)
        return self.finish(state)


def sample(sampler, classes, seeds, steps=T):
    params = torch.stack([torch.as_tensor(classes), torch.as_tensor(seeds)], 1).long()
    with torch.no_grad():
        state = sampler.start(params)
        n = len(classes)
        total = torch.full([n], steps, dtype=torch.long)
        for i in range(steps):
            state = sampler.step(state, torch.full([n], i, dtype=torch.long), total)
        return sampler.finish(state)


def judge(images_u8, classifier_path):
    """Per-class accuracy of the digits classifier on generated images."""
    clf = torch.jit.load(str(classifier_path))
    clf.eval()
    x = images_u8.float() / 255.0
    with torch.no_grad():
        return clf((x - 0.5) / 0.5).argmax(1)


def write_config(out, accuracy):
    note = f", generated digits classified as their class {accuracy:.3f} of the time" if accuracy is not None else ""
    (out / "model.toml").write_text(f"""# Model config of the example iterative model, written by scripts/train_digit_diffusion.py.
name = "digit-diffusion"
version = "1"
file = "model.pt"
description = "Class-conditional diffusion on scikit-learn's digits ({T} steps{note})"

[iterative]
steps = {T}                 # the most steps a job may ask for, and the default
start = "start"             # start(params int64 [N, 2]) -> state float32 [N, {STATE}]
step = "step"               # step(state, index int64 [N], steps int64 [N]) -> state
finish = "finish"           # finish(state) -> image uint8 [N, 1, {OUT_SIZE}, {OUT_SIZE}]
output = {{ width = {OUT_SIZE}, height = {OUT_SIZE}, channels = 1 }}

[[iterative.params]]        # the JSON job parameters, in start()'s column order
name = "class"
min = 0
max = 9

[[iterative.params]]
name = "seed"
min = 0
max = 4294967295

[batching]
max_batch_size = 64         # jobs whose steps run together in one call of step()
""")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=Path, default=root / "models" / "digit-diffusion")
    ap.add_argument("--classifier", type=Path, default=root / "models" / "digits" / "model.pt")
    ap.add_argument("--iterations", type=int, default=6000)
    ap.add_argument("--judge-per-class", type=int, default=50)
    args = ap.parse_args()

    torch.manual_seed(SEED)
    # One thread: on 2 busy cores two threads wait on each other (3x slower).
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)

    digits = load_digits()
    x_all = torch.as_tensor(digits.images / 16.0, dtype=torch.float32).view(-1, PIXELS) * 2 - 1
    y_all = torch.as_tensor(digits.target, dtype=torch.long)
    alpha_bar = cosine_alpha_bar(T)

    model = Denoiser()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.iterations, pct_start=0.05)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    started = time.time()
    for it in range(args.iterations):
        idx = torch.randint(0, len(x_all), (BATCH,), generator=gen)
        x0, y = x_all[idx], y_all[idx].clone()
        y[torch.rand(BATCH, generator=gen) < 0.15] = NULL_CLASS
        t = torch.randint(0, T, (BATCH,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        ab = alpha_bar[t].unsqueeze(1)
        xt = torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * eps
        loss = F.mse_loss(model(xt, t, y), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(0.998).add_(v, alpha=0.002)
        if it % 2000 == 1999 or it == args.iterations - 1:
            print(f"iteration {it + 1}/{args.iterations} loss {loss.item():.4f} ({time.time() - started:.0f}s)", flush=True)
    model.load_state_dict(ema)
    model.eval()

    sampler = torch.jit.script(Sampler(model, alpha_bar))
    metrics = {"train_seconds": round(time.time() - started, 1), "seed": SEED,
               "iterations": args.iterations, "steps": T, "guidance": GUIDANCE}
    accuracy = None
    if args.classifier.exists():
        per = args.judge_per_class
        classes = [c for c in range(10) for _ in range(per)]
        seeds = list(range(len(classes)))
        pred = judge(sample(sampler, classes, seeds), args.classifier)
        truth = torch.as_tensor(classes)
        per_class = {str(c): (pred[truth == c] == c).float().mean().item() for c in range(10)}
        accuracy = (pred == truth).float().mean().item()
        metrics.update({"judged_per_class": per, "accuracy": accuracy, "accuracy_per_class": per_class,
                        "min_class_accuracy": min(per_class.values())})
    args.out.mkdir(parents=True, exist_ok=True)
    sampler.save(str(args.out / "model.pt"))
    write_config(args.out, accuracy)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
