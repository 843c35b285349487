"""Where a deep TorchScript model's first forward pass goes.

The host freezes a model and runs `optimize_for_inference` at load; the
first forward pass of the frozen module then runs TorchScript's graph
executor, which optimises the (fully inlined) graph once more before it
runs anything. On a 48-block transformer that is seconds of CPU work,
and the host pays it inside its warm-up. This probe measures, for the
same frozen module, the first pass and the steady pass with the graph
executor's optimisation on (libtorch's default) and off, and checks that
both give the same answer.

    python bench/executor_probe.py --device cpu --blocks 48 --width 64
    python bench/executor_probe.py --device cuda --model MODEL_DIR   # a saved model.pt
"""

import argparse
import io
import json
import statistics
import time

import torch


class Block(torch.nn.Module):
    """A pre-norm transformer block, as in a ViT (one head: the graph's size is what matters)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.norm2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))

    def forward(self, x):
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5), dim=-1)
        x = x + self.proj(attention @ v)
        return x + self.mlp(self.norm2(x))


def stack(blocks: int, width: int) -> torch.jit.ScriptModule:
    return torch.jit.script(torch.nn.Sequential(*[Block(width) for _ in range(blocks)]).eval())


def frozen(module, device, half):
    module = module.to(device)
    if half:
        module = module.half()
    return torch.jit.optimize_for_inference(torch.jit.freeze(module.eval()))


def timed(module, x, device, runs):
    def once():
        start = time.perf_counter()
        with torch.inference_mode():
            y = module(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, y

    first, y = once()
    steady = [once()[0] for _ in range(runs)]
    return first, statistics.median(steady), y


def first_tensor(y):
    """A model's first output tensor (a tuple's, a list's or a dict's)."""
    while not isinstance(y, torch.Tensor):
        y = next(iter(y.values())) if isinstance(y, dict) else y[0]
    return y


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="a model directory with model.pt (else a transformer stack is built)")
    p.add_argument("--blocks", type=int, default=48)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--tokens", type=int, default=16, help="tokens per input of the built stack")
    p.add_argument("--image", type=int, default=224, help="image side for --model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    device = torch.device(a.device)
    half = device.type == "cuda"
    torch._C._jit_set_profiling_executor(False)
    if a.model:
        source = lambda: torch.jit.load(f"{a.model}/model.pt", map_location="cpu")
        x = torch.rand(a.batch, 3, a.image, a.image, device=device)
    else:
        torch.manual_seed(0)
        saved = io.BytesIO()
        torch.jit.save(stack(a.blocks, a.width), saved)
        # Each run freezes its own copy: freezing changes the module's class types.
        source = lambda: torch.jit.load(io.BytesIO(saved.getvalue()), map_location="cpu")
        x = torch.rand(a.batch, a.tokens, a.width, device=device)
    if half:
        x = x.half()
    # The process's one-time costs (kernel libraries, allocator) first, so
    # that neither setting pays them: a pass of a throwaway frozen copy.
    torch._C._set_graph_executor_optimize(True)
    throwaway = frozen(source(), device, half)
    torch._C._set_graph_executor_optimize(False)
    timed(throwaway, x, device, 1)
    rows = {}
    answers = {}
    for optimize in (True, False):
        # Freezing needs the flag on (it inlines through it); the executor
        # reads it when it plans the first run.
        torch._C._set_graph_executor_optimize(True)
        start = time.perf_counter()
        module = frozen(source(), device, half)
        prepare = time.perf_counter() - start
        torch._C._set_graph_executor_optimize(optimize)
        first, steady, y = timed(module, x, device, a.runs)
        answers[optimize] = first_tensor(y).float().cpu()
        rows["optimize_on" if optimize else "optimize_off"] = {"freeze_s": round(prepare, 3), "first_s": round(first, 3), "steady_ms": round(steady * 1e3, 3)}
    torch._C._set_graph_executor_optimize(True)
    same = torch.allclose(answers[True], answers[False], rtol=1e-2, atol=1e-2)
    print(json.dumps({"device": a.device, "model": a.model or f"stack{a.blocks}x{a.width}", **rows, "same_answers": same}))


if __name__ == "__main__":
    main()
