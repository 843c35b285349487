"""The *baseline*: what people run today, kept only to compare against.

A single FastAPI + uvicorn process that imports torch, holds the same
TorchScript model itself, and answers each request on its own (batch 1),
decoding with Pillow. It reads the same model.toml as the model-host so the
pre-processing (size, channels, mean, std) and the answer match.

    python bench/baseline/server.py --model models/digits --port 9000 [--device cuda]
    curl --data-binary @7.png -H 'content-type: image/png' localhost:9000/v1/models/digits/predict
"""

import argparse
import io
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from PIL import Image


def build_app(model_dir: Path, device: str) -> FastAPI:
    toml_path = model_dir / "model.toml" if model_dir.is_dir() else model_dir
    config = tomllib.loads(toml_path.read_text())
    inp = config["input"]
    width, height, channels = inp["width"], inp["height"], inp["channels"]
    labels = config["output"]["labels"]
    softmax = config["output"].get("softmax", True)
    dev = torch.device(device)
    model = torch.jit.load(str(toml_path.parent / config["file"]), map_location=dev).eval()
    mean = torch.tensor(inp["mean"], device=dev).view(1, -1, 1, 1)
    std = torch.tensor(inp["std"], device=dev).view(1, -1, 1, 1)
    app = FastAPI()

    @app.get("/health/ready")
    def ready():
        return {"status": "ready"}

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: Request, top_k: int = 5):
        if name != config["name"]:
            raise HTTPException(404, f"model {name} not found")
        body = await request.body()
        try:
            image = Image.open(io.BytesIO(body))
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
        except Exception as e:  # noqa: BLE001 - any decode failure is the client's
            raise HTTPException(400, f"invalid image: {e}") from e
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).reshape(height, width, channels).copy())
        with torch.inference_mode():
            x = pixels.to(dev).permute(2, 0, 1).unsqueeze(0).float().div(255).sub(mean).div(std)
            out = model(x)
            scores = out.softmax(1) if softmax else out
            values, indices = scores.topk(min(top_k, len(labels)), dim=1)
        return {
            "model": config["name"],
            "predictions": [
                {"label": labels[i], "index": i, "score": v}
                for v, i in zip(values[0].tolist(), indices[0].tolist())
            ],
        }

    return app


def main():
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    app = build_app(args.model, args.device)
    print(f"baseline: model loaded {time.monotonic() - started:.2f} s after start", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
