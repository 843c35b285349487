//! model.toml: what parses, what is refused, and the message naming why.
use super::*;

const GOOD: &str = r#"
name = "digits"
version = "1"
file = "model.pt"
[input]
width = 32
height = 32
channels = 1
mean = [0.5]
std = [0.5]
[output]
kind = "classification"
labels = ["0", "1"]
[batching]
max_batch_size = 8
batch_sizes = [1, 8]
"#;

fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.toml"), text).unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

#[test]
fn loads_a_directory_and_resolves_the_model_file() {
    let (_dir, path) = write(GOOD);
    let loaded = load(&path).unwrap();
    assert_eq!(loaded.model_file, path.join("model.pt"));
    let classifier = loaded.config.classifier().expect("an image classifier");
    assert!(classifier.output.softmax);
    assert_eq!(classifier.output.kind, OutputKind::Classification);
    assert!(loaded.config.tensors().is_none());
    assert_eq!(loaded.config.item_input_bytes(), 32 * 32);
    assert_eq!(loaded.config.optimization.precision, Precision::Fp32, "optional section defaults");
    assert_eq!(loaded.config.batching.max_queue_delay_us, 0);
}

#[test]
fn names_the_field_that_is_wrong() {
    for (from, to, field) in [
        ("channels = 1", "channels = 2", "input.channels"),
        ("std = [0.5]", "std = [0.0]", "input.std"),
        ("mean = [0.5]", "mean = [0.5, 0.5]", "input.mean/std"),
        ("max_batch_size = 8", "max_batch_size = 0", "batching.max_batch_size"),
        ("[1, 8]", "[1, 9]", "batching.batch_sizes"),
        ("batch_sizes = [1, 8]", "batch_sizes = [1, 8]\npreferred_batch_sizes = [0]", "batching.preferred_batch_sizes"),
        ("labels = [\"0\", \"1\"]", "labels = []", "output.labels"),
    ] {
        let (_dir, path) = write(&GOOD.replace(from, to));
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ModelConfigError::Invalid { field: f, .. } if f == field), "{to}: {err}");
    }
}

#[test]
fn batch_shapes_and_padding() {
    let b = BatchingConfig { max_batch_size: 24, batch_sizes: vec![], max_queue_delay_us: 0, preferred_batch_sizes: vec![] };
    assert_eq!(b.shapes(), vec![1, 2, 4, 8, 12, 16, 24]);
    let b = BatchingConfig { max_batch_size: 32, batch_sizes: vec![], max_queue_delay_us: 0, preferred_batch_sizes: vec![] };
    assert_eq!(b.shapes(), vec![1, 2, 4, 8, 12, 16, 32]);
    let b = BatchingConfig { max_batch_size: 128, batch_sizes: vec![], max_queue_delay_us: 0, preferred_batch_sizes: vec![] };
    assert_eq!(b.shapes(), vec![1, 2, 4, 8, 12, 16, 32, 48, 64, 80, 96, 112, 128]);
    assert_eq!(padded_batch(&b.shapes(), 71), 80);
    assert_eq!(padded_batch(&b.shapes(), 10), 12);
    let b = BatchingConfig { max_batch_size: 32, batch_sizes: vec![8, 1], max_queue_delay_us: 0, preferred_batch_sizes: vec![] };
    assert_eq!(b.shapes(), vec![1, 8, 32]);
    let shapes = b.shapes();
    assert_eq!(padded_batch(&shapes, 1), 1);
    assert_eq!(padded_batch(&shapes, 2), 8);
    assert_eq!(padded_batch(&shapes, 9), 32);
    assert_eq!(padded_batch(&shapes, 32), 32);
}

#[test]
fn four_shapes_spread_on_a_log_scale_are_warmed_before_ready() {
    let batching = |max, sizes: Vec<u32>| {
        BatchingConfig { max_batch_size: max, batch_sizes: sizes, max_queue_delay_us: 0, preferred_batch_sizes: vec![] }.shapes()
    };
    assert_eq!(shapes_before_ready(&batching(128, vec![])), vec![1, 4, 32, 128]);
    assert_eq!(shapes_before_ready(&batching(32, vec![])), vec![1, 4, 12, 32]);
    assert_eq!(shapes_before_ready(&batching(256, vec![])), vec![1, 8, 48, 256]);
    // Four or fewer: all of them.
    assert_eq!(shapes_before_ready(&batching(8, vec![])), vec![1, 2, 4, 8]);
    assert_eq!(shapes_before_ready(&batching(32, vec![8, 1])), vec![1, 8, 32]);
    assert_eq!(shapes_before_ready(&[]), Vec::<u32>::new());
    // Two thirds may land on the same interior shape: chosen once.
    assert_eq!(shapes_before_ready(&[1, 2, 30, 999, 1000]), vec![1, 30, 1000]);
    // The largest is always among them, so every batch has a ready shape.
    for max in [5, 17, 64, 100, 1024] {
        let ready = shapes_before_ready(&batching(max, vec![]));
        assert_eq!(ready.last(), Some(&max), "{max}");
        assert_eq!(ready.first(), Some(&1), "{max}");
    }
}

#[test]
fn optimization_and_batching_policy_parse() {
    let text = GOOD.replace("batch_sizes = [1, 8]", "batch_sizes = [1, 8]\nmax_queue_delay_us = 500\npreferred_batch_sizes = [4]")
        + "[optimization]\nprecision = \"fp16\"\nchannels_last = true\n";
    let (_dir, path) = write(&text);
    let c = load(&path).unwrap().config;
    assert_eq!(c.optimization.precision, Precision::Fp16);
    assert!(c.optimization.channels_last);
    let p = c.batching.policy();
    assert_eq!((p.max_batch_size, p.max_queue_delay, p.preferred), (8, std::time::Duration::from_micros(500), vec![4]));
}

#[test]
fn unknown_keys_and_missing_files_are_errors() {
    let (_dir, path) = write(&GOOD.replace("version = \"1\"", "version = \"1\"\ncolour = 3"));
    assert!(matches!(load(&path), Err(ModelConfigError::Parse { .. })));
    assert!(matches!(load(Path::new("/nonexistent/model.toml")), Err(ModelConfigError::Read { .. })));
}

const TENSORS: &str = r#"
name = "detector"
version = "1"
file = "model.pt"
description = "boxes"
[[inputs]]
name = "image"
datatype = "FP32"
dims = [3, 32, 32]
[[inputs]]
name = "threshold"
datatype = "FP32"
dims = [1]
[[outputs]]
name = "boxes"
datatype = "FP32"
dims = [8, 4]
[[outputs]]
name = "labels"
datatype = "INT64"
dims = [8]
[batching]
max_batch_size = 8
"#;

#[test]
fn loads_a_tensor_model() {
    let (_dir, path) = write(TENSORS);
    let c = load(&path).unwrap().config;
    assert!(c.classifier().is_none());
    let s = c.tensors().expect("a tensor model");
    let names = |specs: &[TensorSpec]| specs.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&s.inputs), ["image", "threshold"]);
    assert_eq!(names(&s.outputs), ["boxes", "labels"]);
    assert_eq!(s.inputs[0], TensorSpec { name: "image".into(), datatype: DataType::Fp32, dims: vec![3, 32, 32] });
    assert_eq!(s.outputs[1].datatype, DataType::Int64);
    // 12,288 bytes of image, then the threshold at the next 64-byte boundary.
    assert_eq!(c.item_input_bytes(), 12_288 + 64);
    assert_eq!(c.description, "boxes");
}

#[test]
fn a_tensor_model_may_have_scalar_items_and_every_datatype() {
    let mut text = TENSORS.replace("dims = [1]", "dims = []");
    for d in DataType::ALL {
        text = text.replace("[batching]", &format!("[[outputs]]\nname = \"o_{}\"\ndatatype = \"{}\"\ndims = [2]\n[batching]", d.name(), d.name()));
    }
    let (_dir, path) = write(&text);
    let c = load(&path).unwrap().config;
    let s = c.tensors().unwrap();
    assert!(s.inputs[1].dims.is_empty());
    assert_eq!(s.outputs.len(), 2 + DataType::ALL.len());
}

#[test]
fn names_the_tensor_field_that_is_wrong() {
    let huge = format!("dims = [{}, 2]", MAX_SLOT_SIZE);
    let overflow = format!("dims = [{}, {}]", u64::MAX, u64::MAX);
    let many_dims = format!("dims = [{}]", ["1"; MAX_DIMS + 1].join(", "));
    let many_inputs = "[[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [1]\n".repeat(MAX_TENSORS + 1);
    let cases: Vec<(&str, String, &str)> = vec![
        ("name = \"threshold\"", "name = \"image\"".into(), "inputs.name"),
        ("name = \"labels\"", "name = \"la bels\"".into(), "outputs.name"),
        ("name = \"labels\"", "name = \"\"".into(), "outputs.name"),
        ("datatype = \"INT64\"", "datatype = \"int64\"".into(), "outputs.datatype"),
        ("dims = [8, 4]", "dims = [8, 0]".into(), "outputs.dims"),
        ("dims = [3, 32, 32]", huge, "inputs.dims"),
        ("dims = [3, 32, 32]", overflow, "inputs.dims"),
        ("dims = [1]", many_dims, "inputs.dims"),
        ("[batching]", format!("{many_inputs}[batching]"), "inputs"),
        ("max_batch_size = 8", "max_batch_size = 0".into(), "batching.max_batch_size"),
    ];
    for (from, to, field) in cases {
        assert!(TENSORS.contains(from), "{from}");
        let (_dir, path) = write(&TENSORS.replacen(from, &to, 1));
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ModelConfigError::Invalid { field: f, .. } if f == field), "{to}: {err}");
    }
    // A tensor model takes [optimization] as every kind does.
    let (_dir, path) = write(&TENSORS.replace("[batching]", "[optimization]\nprecision = \"fp16\"\nchannels_last = true\n[batching]"));
    assert_eq!(load(&path).unwrap().config.optimization.precision, Precision::Fp16);
    let (_dir, path) = write(&TENSORS.replace("\"INT64\"", "\"FLOAT\""));
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains("labels") && err.contains("FLOAT") && err.contains("BOOL, UINT8") && err.contains("FP64"), "{err}");
}

#[test]
fn exactly_one_kind_of_model() {
    let outputs_at = TENSORS.find("[[outputs]]").unwrap();
    let batching_at = TENSORS.find("[batching]").unwrap();
    let inputs_at = TENSORS.find("[[inputs]]").unwrap();
    let no_outputs = format!("{}{}", &TENSORS[..outputs_at], &TENSORS[batching_at..]);
    let no_inputs = format!("{}{}", &TENSORS[..inputs_at], &TENSORS[outputs_at..]);
    let image_at = GOOD.find("[input]").unwrap();
    let output_at = GOOD.find("[output]").unwrap();
    let g_batching_at = GOOD.find("[batching]").unwrap();
    let no_output = format!("{}{}", &GOOD[..output_at], &GOOD[g_batching_at..]);
    let no_input = format!("{}{}", &GOOD[..image_at], &GOOD[output_at..]);
    let neither = format!("{}{}", &GOOD[..image_at], &GOOD[g_batching_at..]);
    let both = GOOD.replace("[batching]", &format!("{}[batching]", &TENSORS[inputs_at..batching_at]));
    let empty_inputs = TENSORS.replace("description = \"boxes\"", "description = \"boxes\"\ninputs = []").replace("[[inputs]]\nname = \"image\"\ndatatype = \"FP32\"\ndims = [3, 32, 32]\n[[inputs]]\nname = \"threshold\"\ndatatype = \"FP32\"\ndims = [1]\n", "");
    for (text, field) in [
        (no_outputs, "outputs"),
        (no_inputs, "inputs"),
        (no_output, "output"),
        (no_input, "input"),
        (neither, "input"),
        (both, "inputs"),
        (empty_inputs, "inputs"),
    ] {
        let (_dir, path) = write(&text);
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ModelConfigError::Invalid { field: f, .. } if f == field), "{text}\n{err}");
    }
    // Unknown keys stay errors inside a tensor entry too.
    let (_dir, path) = write(&TENSORS.replace("dims = [8]", "dims = [8]\nshape = [8]"));
    assert!(matches!(load(&path), Err(ModelConfigError::Parse { .. })));
}
