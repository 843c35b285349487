#!/usr/bin/env python3
"""Triton's stock HTTP client (tritonclient.http, unmodified) against a
tensor model served by the gateway, checked against the outputs the model
gave in-process (its reference.json, written by
scripts/make_tensor_models.py with torch.jit.load). Run by
tests/tritonclient.rs; exits non-zero on the first failure.

    .venv/bin/python tests/python/triton_tensor_check.py \\
        --url 127.0.0.1:8080 --model-dir models/dtypes

Every reference item in one batch, three ways: JSON input and output data
(BF16 inputs, which the client sends only as binary, go binary), binary
input and output data, and system shared memory (all inputs in one
registered region, all outputs written into another at their offsets);
and, when the model has an example.png, that image encoded as BYTES for
its UINT8 [h, w, c] input.
"""

import argparse
import json
import sys
import tomllib
from pathlib import Path

import ml_dtypes
import numpy as np
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "BF16": ml_dtypes.bfloat16, "FP32": np.float32, "FP64": np.float64,
}


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def load(model_dir):
    config = tomllib.loads((model_dir / "model.toml").read_text())
    reference = json.loads((model_dir / "reference.json").read_text())
    return config, reference["items"]


def batch(items, side, spec):
    values = [item[side][spec["name"]] for item in items]
    return np.array(values, dtype=NUMPY[spec["datatype"]]).reshape([len(items)] + spec["dims"])


def compare(name, got, want, tolerance):
    check(got is not None, f"{name}: no data")
    check(got.shape == want.shape, f"{name}: shape {got.shape}, reference {want.shape}")
    if tolerance == 0:
        check(np.array_equal(got.astype(want.dtype), want), f"{name}: {got.ravel()[:8]} != reference {want.ravel()[:8]}")
        return 0.0
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    check(diff <= tolerance, f"{name}: max |diff| {diff} over {tolerance}")
    return diff


def infer(client, model, config, items, binary):
    inputs = []
    for spec in config["inputs"]:
        data = batch(items, "inputs", spec)
        tensor = httpclient.InferInput(spec["name"], list(data.shape), spec["datatype"])
        tensor.set_data_from_numpy(data, binary_data=binary or spec["datatype"] == "BF16")
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(spec["name"], binary_data=binary) for spec in config["outputs"]]
    return client.infer(model, inputs, outputs=outputs, request_id=f"tensors-{binary}")


def infer_through_shared_memory(client, model, config, items):
    """Every input from one region, every output into another, each at its own offset."""
    arrays = [batch(items, "inputs", spec) for spec in config["inputs"]]
    in_offsets = np.cumsum([0] + [a.nbytes for a in arrays]).tolist()
    wanted = [batch(items, "outputs", spec) for spec in config["outputs"]]
    out_offsets = np.cumsum([0] + [w.nbytes for w in wanted]).tolist()
    client.unregister_system_shared_memory()
    regions = [
        shm.create_shared_memory_region("tensors_in", "/splitserve_tensors_in", in_offsets[-1]),
        shm.create_shared_memory_region("tensors_out", "/splitserve_tensors_out", out_offsets[-1]),
    ]
    try:
        for array, offset in zip(arrays, in_offsets):
            shm.set_shared_memory_region(regions[0], [array], offset=offset)
        client.register_system_shared_memory("tensors_in", "/splitserve_tensors_in", in_offsets[-1])
        client.register_system_shared_memory("tensors_out", "/splitserve_tensors_out", out_offsets[-1])
        inputs = []
        for spec, array, offset in zip(config["inputs"], arrays, in_offsets):
            tensor = httpclient.InferInput(spec["name"], list(array.shape), spec["datatype"])
            tensor.set_shared_memory("tensors_in", array.nbytes, offset=offset)
            inputs.append(tensor)
        outputs = []
        for spec, want, offset in zip(config["outputs"], wanted, out_offsets):
            output = httpclient.InferRequestedOutput(spec["name"])
            output.set_shared_memory("tensors_out", want.nbytes, offset=offset)
            outputs.append(output)
        result = client.infer(model, inputs, outputs=outputs)
        got = []
        for spec, want, offset in zip(config["outputs"], wanted, out_offsets):
            answered = result.get_output(spec["name"])
            check(answered["parameters"]["shared_memory_region"] == "tensors_out", f"{answered}")
            got.append(shm.get_contents_as_numpy(regions[1], NUMPY[spec["datatype"]], list(want.shape), offset=offset).copy())
        return got
    finally:
        client.unregister_system_shared_memory()
        for region in regions:
            shm.destroy_shared_memory_region(region)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the gateway's host:port")
    parser.add_argument("--model-dir", required=True, type=Path, help="models/dtypes or models/detector")
    parser.add_argument("--tolerance", type=float, default=0.0, help="for float outputs; 0: exact")
    args = parser.parse_args()
    config, items = load(args.model_dir)
    model = config["name"]

    client = httpclient.InferenceServerClient(url=args.url, network_timeout=60.0)
    check(client.is_model_ready(model), f"model {model} is not ready")
    metadata = client.get_model_metadata(model)
    check([i["name"] for i in metadata["inputs"]] == [s["name"] for s in config["inputs"]], f"metadata {metadata}")
    for spec, described in zip(config["inputs"], metadata["inputs"]):
        check(described["datatype"] == spec["datatype"] and described["shape"] == [-1] + spec["dims"], f"{described} vs {spec}")

    for binary in (False, True):
        result = infer(client, model, config, items, binary)
        worst = max(compare(s["name"], result.as_numpy(s["name"]), batch(items, "outputs", s), args.tolerance) for s in config["outputs"])
        print(f"{model}: {len(items)} items, binary={binary}: {len(config['outputs'])} outputs match, max |diff| {worst:.3g}")

    example = args.model_dir / "example.png"
    if example.exists():
        # The UINT8 [h, w, c] input as an encoded image (BYTES); example.png is item 0.
        pixel = next(s for s in config["inputs"] if s["datatype"] == "UINT8" and len(s["dims"]) == 3)
        inputs = []
        for spec in config["inputs"]:
            if spec is pixel:
                tensor = httpclient.InferInput(spec["name"], [1], "BYTES")
                tensor.set_data_from_numpy(np.array([example.read_bytes()], dtype=np.object_), binary_data=True)
            else:
                data = batch(items[:1], "inputs", spec)
                tensor = httpclient.InferInput(spec["name"], list(data.shape), spec["datatype"])
                tensor.set_data_from_numpy(data, binary_data=True)
            inputs.append(tensor)
        result = client.infer(model, inputs)
        worst = max(compare(s["name"], result.as_numpy(s["name"]), batch(items[:1], "outputs", s), args.tolerance) for s in config["outputs"])
        print(f"{model}: {example.name} as BYTES for {pixel['name']}: outputs match item 0, max |diff| {worst:.3g}")

    got = infer_through_shared_memory(client, model, config, items)
    worst = max(compare(s["name"], g, batch(items, "outputs", s), args.tolerance) for s, g in zip(config["outputs"], got))
    print(f"{model}: through system shared memory: {len(got)} outputs match, max |diff| {worst:.3g}")
    client.close()
    print("triton tensor check: ok")


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, InferenceServerException) as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
