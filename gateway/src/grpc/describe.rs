//! Metadata, model config, statistics and the repository index as
//! messages. Each is built once, as the JSON the REST side answers with
//! ([`crate::routes::v2::metadata`] and its siblings), and read here into
//! Triton's messages, field by field: one description, two encodings.

use serde_json::Value;

use super::proto::model_metadata_response::TensorMetadata;
use super::proto::repository_index_response::ModelIndex;
use super::proto::{
    DataType, InferStatistics, ModelConfig, ModelInput, ModelMetadataResponse, ModelOutput, ModelParameter, ModelStatistics,
    ModelTensorReshape, StatisticDuration, model_input,
};

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default()
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

pub fn metadata(v: &Value) -> ModelMetadataResponse {
    let tensor = |t: &Value| TensorMetadata { name: text(t, "name"), datatype: text(t, "datatype"), shape: ints(&t["shape"]) };
    ModelMetadataResponse {
        name: text(v, "name"),
        versions: list(&v["versions"]).iter().filter_map(Value::as_str).map(String::from).collect(),
        platform: text(v, "platform"),
        inputs: list(&v["inputs"]).iter().map(tensor).collect(),
        outputs: list(&v["outputs"]).iter().map(tensor).collect(),
    }
}

fn data_type(v: &Value) -> i32 {
    DataType::from_str_name(v["data_type"].as_str().unwrap_or_default()).unwrap_or(DataType::TypeInvalid) as i32
}

fn reshape(v: &Value) -> Option<ModelTensorReshape> {
    v.get("reshape").map(|r| ModelTensorReshape { shape: ints(&r["shape"]) })
}

pub fn config(v: &Value) -> ModelConfig {
    let input = |t: &Value| ModelInput {
        name: text(t, "name"),
        data_type: data_type(t),
        format: model_input::Format::from_str_name(t["format"].as_str().unwrap_or_default()).unwrap_or_default() as i32,
        dims: ints(&t["dims"]),
        reshape: reshape(t),
        optional: t["optional"].as_bool().unwrap_or(false),
    };
    let output = |t: &Value| ModelOutput { name: text(t, "name"), data_type: data_type(t), dims: ints(&t["dims"]), reshape: reshape(t) };
    let parameters = v["parameters"]
        .as_object()
        .map(|p| p.iter().map(|(k, p)| (k.clone(), ModelParameter { string_value: text(p, "string_value") })).collect())
        .unwrap_or_default();
    ModelConfig {
        name: text(v, "name"),
        platform: text(v, "platform"),
        max_batch_size: v["max_batch_size"].as_i64().unwrap_or(0) as i32,
        input: list(&v["input"]).iter().map(input).collect(),
        output: list(&v["output"]).iter().map(output).collect(),
        parameters,
    }
}

pub fn statistics(v: &Value) -> Vec<ModelStatistics> {
    let duration = |d: &Value| Some(StatisticDuration { count: d["count"].as_u64().unwrap_or(0), ns: d["ns"].as_u64().unwrap_or(0) });
    let model = |m: &Value| {
        let s = &m["inference_stats"];
        ModelStatistics {
            name: text(m, "name"),
            version: text(m, "version"),
            last_inference: m["last_inference"].as_u64().unwrap_or(0),
            inference_count: m["inference_count"].as_u64().unwrap_or(0),
            execution_count: m["execution_count"].as_u64().unwrap_or(0),
            inference_stats: Some(InferStatistics {
                success: duration(&s["success"]),
                fail: duration(&s["fail"]),
                queue: duration(&s["queue"]),
                compute_input: duration(&s["compute_input"]),
                compute_infer: duration(&s["compute_infer"]),
                compute_output: duration(&s["compute_output"]),
            }),
        }
    };
    list(&v["model_stats"]).iter().map(model).collect()
}

pub fn index(entries: &[Value]) -> Vec<ModelIndex> {
    entries
        .iter()
        .map(|e| ModelIndex { name: text(e, "name"), version: text(e, "version"), state: text(e, "state"), reason: text(e, "reason") })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_config_keeps_tritons_enums_and_optional_inputs() {
        let v = json!({"name": "digits", "platform": "pytorch_libtorch", "max_batch_size": 8,
            "input": [{"name": "IMAGE", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}, "optional": true},
                      {"name": "PIXELS", "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [28, 28, 1], "optional": true}],
            "output": [{"name": "PROBABILITIES", "data_type": "TYPE_FP32", "dims": [10]}],
            "parameters": {"device": {"string_value": "cpu"}}});
        let c = config(&v);
        assert_eq!((c.max_batch_size, c.input.len()), (8, 2));
        assert_eq!(c.input[0].data_type, DataType::TypeString as i32);
        assert_eq!(c.input[0].reshape, Some(ModelTensorReshape { shape: vec![] }));
        assert!(c.input[0].optional && c.input[1].optional);
        assert_eq!(c.input[1].format, model_input::Format::Nhwc as i32);
        assert_eq!(c.output[0].dims, vec![10]);
        assert_eq!(c.parameters["device"].string_value, "cpu");
    }
}
