#!/usr/bin/env python3
"""Triton's stock gRPC client (tritonclient.grpc, unmodified, and its
generated service stubs) against the gateway's gRPC port, checked against
the in-process model and against the same requests over REST. Run by
tests/tritonclient_grpc.rs; exits non-zero on the first failure.

    .venv/bin/python tests/python/triton_grpc_check.py \\
        --grpc 127.0.0.1:8001 --http 127.0.0.1:8080 --model-dir models/digits
    .venv/bin/python tests/python/triton_grpc_check.py \\
        --grpc 127.0.0.1:8001 --http 127.0.0.1:8080 --tensor-model-dir models/dtypes

Classifier: health, metadata, config (IMAGE and PIXELS optional); PIXELS
alone with raw contents (the client's way) and with typed uint_contents
(through the stub), IMAGE alone as BYTES, classification strings; 100
requests in flight on one stream, each answer matched to its id and in
order; system shared memory in and out; the same mistake over gRPC and
REST giving INVALID_ARGUMENT and 400 with the same text; statistics and
the repository index.
Tensor model: every reference item with raw and with typed contents (FP16
and BF16 raw, as the protocol has no field for them), and through shared
memory, against the reference outputs.
"""

import argparse
import queue
import sys
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from triton_client_check import BATCH, TOLERANCE, check, held_out, local_probabilities
from triton_tensor_check import NUMPY, batch, compare, load

# Two answers of the same host to the same pixels: rounding apart at most
# (see classifier()).
SAME_INPUT_TOLERANCE = 1e-6

STREAMED = 100
# The InferTensorContents field for each datatype the protocol gives one.
TYPED = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def typed_request(model, tensors, outputs=()):
    """A ModelInferRequest with typed contents (raw for FP16/BF16), built from Triton's own protobuf."""
    request = service_pb2.ModelInferRequest(model_name=model, id="typed")
    for name, datatype, array in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if datatype in TYPED:
            getattr(tensor.contents, TYPED[datatype]).extend(array.ravel().tolist())
        else:
            request.raw_input_contents.append(array.tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def output_array(response, name, dtype):
    for index, output in enumerate(response.outputs):
        if output.name == name:
            return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(list(output.shape))
    raise AssertionError(f"no output {name} in {[o.name for o in response.outputs]}")


def check_health_and_metadata(client, model):
    check(client.is_server_live() and client.is_server_ready(), "server not live or not ready")
    check(client.is_model_ready(model), f"model {model} not ready")
    print(f"server metadata: {client.get_server_metadata(as_json=True)}")
    metadata = client.get_model_metadata(model, as_json=True)
    inputs = {i["name"]: i for i in metadata["inputs"]}
    check(inputs["PIXELS"]["datatype"] == "UINT8" and inputs["PIXELS"]["shape"] == ["-1", "32", "32", "1"], f"PIXELS: {inputs}")
    check(inputs["IMAGE"]["datatype"] == "BYTES", f"IMAGE: {inputs}")
    config = client.get_model_config(model, as_json=True)["config"]
    print(f"model config: {config}")
    check(config["max_batch_size"] == 32, f"max_batch_size {config.get('max_batch_size')}")
    check(all(i.get("optional") for i in config["input"]), f"IMAGE and PIXELS are alternatives, each optional: {config['input']}")


def infer_pixels(client, model, pixels, class_count=0):
    tensor = grpcclient.InferInput("PIXELS", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    wanted = grpcclient.InferRequestedOutput("PROBABILITIES", class_count=class_count)
    result = client.infer(model, [tensor], outputs=[wanted], request_id="pixels")
    check(result.get_response().id == "pixels", f"id {result.get_response().id!r}")
    return result.as_numpy("PROBABILITIES")


def infer_images(client, model, pngs):
    tensor = grpcclient.InferInput("IMAGE", [len(pngs)], "BYTES")
    tensor.set_data_from_numpy(np.array(pngs, dtype=np.object_))
    return client.infer(model, [tensor]).as_numpy("PROBABILITIES")


def rest_pixels(http, model, pixels):
    tensor = httpclient.InferInput("PIXELS", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    return http.infer(model, [tensor]).as_numpy("PROBABILITIES")


def stream(client, model, pixels, expected):
    """STREAMED requests on one stream, all sent before any answer is read."""
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(STREAMED):
            one = pixels[i % len(pixels)][np.newaxis]
            tensor = grpcclient.InferInput("PIXELS", list(one.shape), "UINT8")
            tensor.set_data_from_numpy(one)
            client.async_stream_infer(model, [tensor], request_id=str(i))
        ids = []
        for _ in range(STREAMED):
            result, error = answers.get(timeout=60)
            check(error is None, f"stream error: {error}")
            i = int(result.get_response().id)
            ids.append(i)
            diff = float(np.abs(result.as_numpy("PROBABILITIES")[0] - expected[i % len(pixels)]).max())
            check(diff < TOLERANCE, f"stream answer {i} differs from its request's by {diff}")
        check(ids == list(range(STREAMED)), f"answers out of order: {ids[:20]}...")
    finally:
        client.stop_stream()
    print(f"stream: {STREAMED} requests in flight on one stream, each answered, matched to its id, in order")


def through_shared_memory(client, model, pixels, classes):
    in_size, out_size = pixels.nbytes, pixels.shape[0] * classes * 4
    client.unregister_system_shared_memory()
    regions = [
        shm.create_shared_memory_region("g_in", "/splitserve_grpc_in", in_size),
        shm.create_shared_memory_region("g_out", "/splitserve_grpc_out", out_size),
    ]
    try:
        shm.set_shared_memory_region(regions[0], [pixels])
        client.register_system_shared_memory("g_in", "/splitserve_grpc_in", in_size)
        client.register_system_shared_memory("g_out", "/splitserve_grpc_out", out_size)
        status = client.get_system_shared_memory_status(as_json=True)
        check(set(status["regions"]) == {"g_in", "g_out"}, f"status {status}")
        tensor = grpcclient.InferInput("PIXELS", list(pixels.shape), "UINT8")
        tensor.set_shared_memory("g_in", in_size)
        wanted = grpcclient.InferRequestedOutput("PROBABILITIES")
        wanted.set_shared_memory("g_out", out_size)
        result = client.infer(model, [tensor], outputs=[wanted])
        output = result.get_output("PROBABILITIES")
        check(output.parameters["shared_memory_region"].string_param == "g_out", f"output {output}")
        return shm.get_contents_as_numpy(regions[1], np.float32, [pixels.shape[0], classes]).copy()
    finally:
        client.unregister_system_shared_memory()
        check(client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}, "regions left registered")
        for region in regions:
            shm.destroy_shared_memory_region(region)


def same_mistake_same_text(client, http, model, pixels):
    """FP32 where PIXELS is UINT8: INVALID_ARGUMENT over gRPC, 400 over REST, one text."""
    floats = pixels.astype(np.float32)
    texts = []
    for module, connection in ((grpcclient, client), (httpclient, http)):
        tensor = module.InferInput("PIXELS", list(floats.shape), "FP32")
        tensor.set_data_from_numpy(floats)
        try:
            connection.infer(model, [tensor])
        except InferenceServerException as e:
            texts.append((e.status(), e.message()))
            continue
        raise AssertionError(f"{module.__name__} accepted FP32 PIXELS")
    print(f"wrong datatype: gRPC {texts[0]}, REST {texts[1]}")
    check(texts[0][0] == "StatusCode.INVALID_ARGUMENT" and str(texts[1][0]) == "400", f"statuses {texts}")
    check(texts[0][1] == texts[1][1] and "PIXELS.datatype is FP32; expected UINT8" in texts[0][1], f"texts differ: {texts}")


def classifier(args, client, stub, http):
    model = args.model
    check_health_and_metadata(client, model)
    pixels, pngs, labels = held_out(args.model_dir, BATCH)
    expected = local_probabilities(args.model_dir, pixels)
    got = infer_pixels(client, model, pixels)
    diff = float(np.abs(got - expected).max())
    print(f"PIXELS raw: max |diff| {diff:.3g} to the local model")
    check(got.shape == expected.shape and diff < TOLERANCE, f"PIXELS raw differs by {diff}")
    rest = rest_pixels(http, model, pixels)
    # Not bit for bit: the host batches each item with whatever else is
    # queued, and libtorch's CPU forward pass rounds an item differently by
    # its place in the batch (the same digit at row 0 or row 3 of a batch:
    # up to 9e-8 apart in probability), so two calls with the same pixels
    # agree only to rounding.
    diff = float(np.abs(got - rest).max())
    check(got.shape == rest.shape and diff < SAME_INPUT_TOLERANCE, f"gRPC and REST answers differ by {diff} for the same pixels")
    typed = stub.ModelInfer(typed_request(model, [("PIXELS", "UINT8", pixels)]), timeout=60)
    got = output_array(typed, "PROBABILITIES", np.float32)
    diff = float(np.abs(got - rest).max())
    check(got.shape == rest.shape and diff < SAME_INPUT_TOLERANCE, f"typed uint_contents answer differs from REST's by {diff}")
    print("PIXELS typed uint_contents: equal to raw and to REST")
    top = infer_pixels(client, model, pixels, class_count=3)
    check(top.shape == (BATCH, 3), f"classification shape {top.shape}")
    check([int(row[0].decode().split(":")[1]) for row in top] == expected.argmax(axis=1).tolist(), f"classification {top[:2]}")
    got = infer_images(client, model, pngs)
    check((got.argmax(axis=1) == expected.argmax(axis=1)).all(), "IMAGE argmax differs from the local model")
    print(f"IMAGE alone (BYTES): argmax {got.argmax(axis=1).tolist()}, labels {labels}")
    stream(client, model, pixels, expected)
    got = through_shared_memory(client, model, pixels, expected.shape[1])
    diff = float(np.abs(got - expected).max())
    check(diff < TOLERANCE, f"shared-memory answer differs by {diff}")
    print(f"shared memory in and out: max |diff| {diff:.3g}")
    same_mistake_same_text(client, http, model, pixels)
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    check(int(stats["inference_count"]) >= STREAMED + 4 * BATCH, f"statistics {stats}")
    check(client.get_inference_statistics(as_json=True)["model_stats"][0]["name"] == model, "statistics of every model")
    index = client.get_model_repository_index(as_json=True)["models"]
    check([(m["name"], m["state"]) for m in index] == [(model, "READY")], f"repository index {index}")
    print(f"statistics: {stats['inference_count']} inferences; repository index {index}")


def tensors(args, client, stub):
    config, items = load(args.tensor_model_dir)
    model = config["name"]
    check(client.is_model_ready(model), f"{model} not ready")
    inputs = []
    for spec in config["inputs"]:
        data = batch(items, "inputs", spec)
        tensor = grpcclient.InferInput(spec["name"], list(data.shape), spec["datatype"])
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    worst = max(compare(s["name"], result.as_numpy(s["name"]), batch(items, "outputs", s), args.tolerance) for s in config["outputs"])
    print(f"{model}: raw contents, {len(items)} items: outputs match, max |diff| {worst:.3g}")
    request = typed_request(model, [(s["name"], s["datatype"], batch(items, "inputs", s)) for s in config["inputs"]])
    response = stub.ModelInfer(request, timeout=60)
    worst = max(
        compare(s["name"], output_array(response, s["name"], NUMPY[s["datatype"]]), batch(items, "outputs", s), args.tolerance)
        for s in config["outputs"]
    )
    print(f"{model}: typed contents: outputs match, max |diff| {worst:.3g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpc", required=True, help="the gateway's gRPC host:port")
    parser.add_argument("--http", required=True, help="the gateway's HTTP host:port")
    parser.add_argument("--model-dir", type=Path, help="models/digits: the classifier checks")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--tensor-model-dir", type=Path, help="models/dtypes or models/detector: the tensor checks")
    parser.add_argument("--tolerance", type=float, default=0.0)
    args = parser.parse_args()
    client = grpcclient.InferenceServerClient(url=args.grpc)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(args.grpc))
    http = httpclient.InferenceServerClient(url=args.http, network_timeout=60.0)
    if args.model_dir:
        classifier(args, client, stub, http)
    if args.tensor_model_dir:
        tensors(args, client, stub)
    client.close()
    print("triton grpc check: ok")


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, InferenceServerException, grpc.RpcError) as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
