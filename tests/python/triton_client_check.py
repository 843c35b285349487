#!/usr/bin/env python3
"""Triton's stock HTTP client (tritonclient.http, unmodified) against the
gateway's Open Inference Protocol routes, checked against the in-process
model. Run by tests/tritonclient.rs; exits non-zero on the first failure.

    .venv/bin/python tests/python/triton_client_check.py \\
        --url 127.0.0.1:8080 --model-dir models/digits

Covers: server live/ready, model ready, model metadata and config; one
batch of held-out digits as PIXELS (UINT8 [n,32,32,1]) with JSON input data
and with binary input data, each asking for PROBABILITIES as JSON and as
binary (the client reads either answer); the same digits PNG-encoded as
IMAGE (BYTES, binary); a wrong input name raising InferenceServerException;
with --shared-memory, the same batch through registered system
shared-memory regions (PIXELS read from one, PROBABILITIES written into
another, neither crossing HTTP), region status, and unregistering.
"""

import argparse
import io
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from PIL import Image
from tritonclient.utils import InferenceServerException

BATCH = 8
TOLERANCE = 1e-4


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def held_out(model_dir, n):
    """The first n gray8 held-out digits: (32x32 gray uint8 pixels, PNG bytes, label)."""
    paths = sorted((model_dir / "testset" / "gray8").glob("*.png"))[:n]
    check(len(paths) == n, f"expected {n} held-out images under {model_dir}/testset/gray8")
    pixels, pngs, labels = [], [], []
    for path in paths:
        image = Image.open(path).convert("L").resize((32, 32), Image.BILINEAR)
        pixels.append(np.asarray(image, dtype=np.uint8))
        pngs.append(path.read_bytes())
        labels.append(int(path.stem.rsplit("_", 1)[1]))
    return np.stack(pixels)[..., np.newaxis], pngs, labels


def local_probabilities(model_dir, pixels):
    """The model in this process, normalised as the host does: (x/255 - mean)/std, NCHW float32, softmax."""
    config = tomllib.loads((model_dir / "model.toml").read_text())
    mean = np.array(config["input"]["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.array(config["input"]["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    x = pixels.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    x = (x - mean) / std
    model = torch.jit.load(str(model_dir / config["file"]), map_location="cpu").eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x)))
    return torch.softmax(logits, dim=1).numpy()


def check_health_and_metadata(client, model):
    check(client.is_server_live(), "server is not live")
    check(client.is_server_ready(), "server is not ready")
    check(client.is_model_ready(model), f"model {model} is not ready")
    server = client.get_server_metadata()
    print(f"server metadata: {server}")
    metadata = client.get_model_metadata(model)
    print(f"model metadata: {metadata}")
    check(metadata["name"] == model, f"metadata names {metadata['name']!r}")
    inputs = {i["name"]: i for i in metadata["inputs"]}
    check(inputs["PIXELS"]["datatype"] == "UINT8" and inputs["PIXELS"]["shape"] == [-1, 32, 32, 1], f"PIXELS: {inputs}")
    check(inputs["IMAGE"]["datatype"] == "BYTES", f"IMAGE: {inputs}")
    outputs = {o["name"]: o for o in metadata["outputs"]}
    check(outputs["PROBABILITIES"]["shape"] == [-1, 10], f"PROBABILITIES: {outputs}")
    config = client.get_model_config(model)
    print(f"model config: {config}")
    check(config["max_batch_size"] == 32, f"max_batch_size {config.get('max_batch_size')}")
    check({i["name"] for i in config["input"]} == {"PIXELS", "IMAGE"}, f"config inputs {config['input']}")


def infer_pixels(client, model, pixels, binary_input, binary_output):
    tensor = httpclient.InferInput("PIXELS", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary_input)
    wanted = httpclient.InferRequestedOutput("PROBABILITIES", binary_data=binary_output)
    result = client.infer(model, [tensor], outputs=[wanted], request_id="pixels")
    check(result.get_response()["model_name"] == model, f"response {result.get_response()}")
    # The gateway may answer JSON where binary was asked; the client reads both.
    answered = "binary" if "binary_data_size" in result.get_output("PROBABILITIES").get("parameters", {}) else "json"
    return result.as_numpy("PROBABILITIES"), answered


def infer_images(client, model, pngs):
    elements = np.array(pngs, dtype=np.object_)
    tensor = httpclient.InferInput("IMAGE", [len(pngs)], "BYTES")
    tensor.set_data_from_numpy(elements, binary_data=True)
    wanted = httpclient.InferRequestedOutput("PROBABILITIES", binary_data=True)
    return client.infer(model, [tensor], outputs=[wanted]).as_numpy("PROBABILITIES")


def check_wrong_input_name(client, model, pixels):
    tensor = httpclient.InferInput("PIXELZ", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=False)
    try:
        client.infer(model, [tensor])
    except InferenceServerException as e:
        print(f"wrong input name: {e}")
        check("PIXELZ" in str(e), f"the error does not name the input: {e}")
        return
    raise AssertionError("a wrong input name was accepted")


def infer_through_shared_memory(client, model, pixels, classes):
    """PIXELS from one registered region, PROBABILITIES into another."""
    in_size, out_size = pixels.nbytes, pixels.shape[0] * classes * 4
    client.unregister_system_shared_memory()
    regions = [
        shm.create_shared_memory_region("pixels_in", "/splitserve_test_in", in_size),
        shm.create_shared_memory_region("probs_out", "/splitserve_test_out", out_size),
    ]
    try:
        shm.set_shared_memory_region(regions[0], [pixels])
        client.register_system_shared_memory("pixels_in", "/splitserve_test_in", in_size)
        client.register_system_shared_memory("probs_out", "/splitserve_test_out", out_size)
        status = client.get_system_shared_memory_status()
        print(f"shared memory status: {status}")
        check({r["name"] for r in status} == {"pixels_in", "probs_out"}, f"status lists {status}")
        tensor = httpclient.InferInput("PIXELS", list(pixels.shape), "UINT8")
        tensor.set_shared_memory("pixels_in", in_size)
        wanted = httpclient.InferRequestedOutput("PROBABILITIES", binary_data=True)
        wanted.set_shared_memory("probs_out", out_size)
        result = client.infer(model, [tensor], outputs=[wanted])
        output = result.get_output("PROBABILITIES")
        check(output["parameters"]["shared_memory_region"] == "probs_out", f"output {output}")
        check("data" not in output and "binary_data_size" not in output["parameters"], f"data came over HTTP too: {output}")
        got = shm.get_contents_as_numpy(regions[1], np.float32, [pixels.shape[0], classes])
        return got.copy()
    finally:
        client.unregister_system_shared_memory()
        check(client.get_system_shared_memory_status() == [], "regions left registered")
        for region in regions:
            shm.destroy_shared_memory_region(region)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the gateway's host:port")
    parser.add_argument("--model-dir", required=True, type=Path, help="models/digits")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--shared-memory", action="store_true", help="also check the system shared-memory extension")
    args = parser.parse_args()

    client = httpclient.InferenceServerClient(url=args.url, network_timeout=60.0)
    check_health_and_metadata(client, args.model)

    pixels, pngs, labels = held_out(args.model_dir, BATCH)
    expected = local_probabilities(args.model_dir, pixels)
    print(f"labels {labels}, local argmax {expected.argmax(axis=1).tolist()}")

    for binary_input in (False, True):
        for binary_output in (False, True):
            got, answered = infer_pixels(client, args.model, pixels, binary_input, binary_output)
            check(got.shape == expected.shape and got.dtype == np.float32, f"shape {got.shape} dtype {got.dtype}")
            diff = float(np.abs(got - expected).max())
            print(f"PIXELS binary_input={binary_input} binary_output={binary_output} (answered {answered}): max |diff| {diff:.3g}")
            check(diff < TOLERANCE, f"PIXELS differs from the local model by {diff}")

    got = infer_images(client, args.model, pngs)
    check(got.shape == expected.shape, f"IMAGE shape {got.shape}")
    diff = float(np.abs(got - expected).max())
    print(f"IMAGE (gateway resize vs Pillow bilinear): max |diff| {diff:.3g}, argmax {got.argmax(axis=1).tolist()}")
    check((got.argmax(axis=1) == expected.argmax(axis=1)).all(), "IMAGE argmax differs from the local model")

    if args.shared_memory:
        got = infer_through_shared_memory(client, args.model, pixels, expected.shape[1])
        diff = float(np.abs(got - expected).max())
        print(f"PIXELS and PROBABILITIES through system shared memory: max |diff| {diff:.3g}")
        check(diff < TOLERANCE, f"shared-memory answer differs from the local model by {diff}")

    check_wrong_input_name(client, args.model, pixels)
    client.close()
    print("triton client check: ok")


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, InferenceServerException) as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
