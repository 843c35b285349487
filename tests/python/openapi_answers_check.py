#!/usr/bin/env python3
"""The gateway's successful answers, checked against its own /openapi.json.
Run by tests/openapi.rs; exits non-zero on the first mismatch.

    .venv/bin/python tests/python/openapi_answers_check.py \\
        --spec openapi.json --url http://127.0.0.1:8080 --image models/shapes-segmenter/testset/043_110x170.png

schemathesis's generated requests rarely make a model answer 200, so the
answers it cannot reach are asked for here, each validated against the
schema the document names for it: a v2 inference as JSON and with its
output as binary data (the JSON header), a classification output, and v1
predict on the detector and the segmenter.
"""

import argparse
import json
import sys
import urllib.request

import jsonschema


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True, help="a PNG for the vision models")
    args = parser.parse_args()
    spec = json.load(open(args.spec))

    def check(schema_name: str, value: object) -> None:
        schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
        jsonschema.Draft202012Validator(schema).validate(value)

    def post(path: str, body: bytes, content_type: str) -> tuple[dict, bytes]:
        request = urllib.request.Request(args.url + path, data=body, headers={"content-type": content_type})
        with urllib.request.urlopen(request) as answer:
            return dict(answer.headers), answer.read()

    model = json.load(urllib.request.urlopen(args.url + "/v1/models/digits"))
    check("ModelDescription", model)
    size = model["input"]["height"] * model["input"]["width"] * model["input"]["channels"]
    pixels = {"name": "PIXELS", "datatype": "UINT8", "shape": [1, model["input"]["height"], model["input"]["width"], model["input"]["channels"]], "data": [0] * size}
    for outputs in ([], [{"name": "PROBABILITIES", "parameters": {"classification": 2}}]):
        request = {"id": "a1", "inputs": [pixels], "outputs": outputs}
        _, body = post("/v2/models/digits/infer", json.dumps(request).encode(), "application/json")
        check("InferResponse", json.loads(body))
    request = {"inputs": [pixels], "parameters": {"binary_data_output": True}}
    headers, body = post("/v2/models/digits/versions/1/infer", json.dumps(request).encode(), "application/json")
    length = int({k.lower(): v for k, v in headers.items()}["inference-header-content-length"])
    check("InferResponse", json.loads(body[:length]))

    image = open(args.image, "rb").read()
    for name, schema in (("shapes-detector", "DetectionAnswer"), ("shapes-segmenter", "SegmentationAnswer")):
        _, body = post(f"/v1/models/{name}/predict", image, "image/png")
        check(schema, json.loads(body))
        check("PredictAnswer", json.loads(body))
    print("openapi answers check: ok")


if __name__ == "__main__":
    try:
        main()
    except jsonschema.ValidationError as e:
        sys.exit(f"an answer does not match the document: {e}")
