//! The shim on the CPU: what runs must match tch's own forward pass, and
//! every failure must come back as an error (never an abort), because the
//! host falls back on each of them.

use std::path::PathBuf;

use tch::{CModule, Device, Kind, Tensor};

use super::*;

fn digits() -> PathBuf {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/digits/model.pt"));
    assert!(path.exists(), "models/digits is missing: run scripts/setup first");
    path
}

fn batch() -> Tensor {
    Tensor::rand([4, 1, 32, 32], (Kind::Float, Device::Cpu))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn forward_matches_tch_before_and_after_freezing() {
    let x = batch();
    let mut reference = CModule::load(digits()).unwrap();
    reference.set_eval();
    let want = tch::no_grad(|| reference.forward_ts(&[&x])).unwrap();

    let mut module = Module::load(&digits(), Device::Cpu, None).unwrap();
    let eager = module.forward(&[&x]).unwrap();
    assert_eq!(eager.size(), want.size());
    assert!(max_diff(&eager, &want) < 1e-5, "eager differs by {}", max_diff(&eager, &want));

    module.freeze(true).unwrap();
    let frozen = module.forward(&[&x]).unwrap();
    // Conv-BN folding changes rounding, not results.
    assert!(max_diff(&frozen, &want) < 1e-3, "frozen differs by {}", max_diff(&frozen, &want));
}

/// Freezing routes libtorch's constant comparisons through the shim's
/// scope (`shim/freeze_equal.cpp`); on a CPU they keep libtorch's own
/// comparison, and the frozen module answers as the eager one.
#[test]
fn freezing_counts_its_constant_comparisons() {
    let file = crate::model::tensor_model::tests::scripted("twins");
    let x = Tensor::rand([3, 8], (Kind::Float, Device::Cpu));
    let mut module = Module::load(&file, Device::Cpu, None).unwrap();
    let eager = module.forward(&[&x]).unwrap();
    let comparisons = module.freeze(true).unwrap();
    assert!(comparisons.compared > 0, "no constant comparison reached the scope: {comparisons:?}");
    assert_eq!(comparisons.by_fingerprint, 0, "CPU tensors keep libtorch's comparison");
    assert!(max_diff(&module.forward(&[&x]).unwrap(), &eager) < 1e-6);
}

/// The fingerprint only ever says "different" when at::equal would: for
/// equal values in other strides, +0 against -0, NaNs, infinities, every
/// dtype it sums and those it leaves to libtorch.
#[test]
fn a_fingerprint_answers_as_libtorch_equal() {
    let x = Tensor::randn([6, 5], (Kind::Float, Device::Cpu));
    let zeros = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    let minus_zeros = Tensor::from_slice(&[-0.0f32, 0.0, -0.0, 0.0]);
    let nan = Tensor::from_slice(&[1.0f32, f32::NAN]);
    let infinities = Tensor::from_slice(&[f32::INFINITY, f32::NEG_INFINITY, 1.0]);
    let mut cases: Vec<(Tensor, Tensor)> = vec![
        (x.copy(), x.copy()),
        (x.copy(), x.tr().contiguous().tr()),
        (x.copy(), &x + 1e-3),
        (x.narrow(0, 1, 4), x.narrow(0, 2, 4)),
        (zeros.copy(), minus_zeros),
        (nan.copy(), nan.copy()),
        (infinities.copy(), infinities.copy()),
        (Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)), Tensor::zeros([0, 3], (Kind::Float, Device::Cpu))),
        (x.copy(), x.view([5, 6])),
    ];
    for kind in [Kind::Half, Kind::BFloat16, Kind::Double, Kind::Int64, Kind::Int8, Kind::Uint8, Kind::Bool, Kind::ComplexFloat] {
        let t = (&x * 3).to_kind(kind);
        cases.push((t.copy(), t.copy()));
        cases.push((t.copy(), (&x * 3 + 1).to_kind(kind)));
    }
    for (i, (a, b)) in cases.iter().enumerate() {
        assert_eq!(fingerprinted_equal(a, b).unwrap(), a.equal(b), "case {i}: {a:?} against {b:?}");
    }
}

/// The streaming loader (`shim/weights_stream.cpp`) takes the example
/// models, and what it loads answers exactly as `torch::jit::load`'s.
#[test]
fn streamed_weights_answer_exactly_as_torch_jit_load() {
    let twins = crate::model::tensor_model::tests::scripted("twins");
    for (file, x) in [(digits(), batch()), (twins, Tensor::rand([3, 8], (Kind::Float, Device::Cpu)))] {
        let module = Module::load(&file, Device::Cpu, None).unwrap();
        let streamed = module.streamed();
        assert_eq!(streamed.plain_because, None, "{}", file.display());
        assert!(streamed.records > 0 && streamed.bytes > 0, "{streamed:?}");
        let mut reference = CModule::load(&file).unwrap();
        reference.set_eval();
        let want = tch::no_grad(|| reference.forward_ts(&[&x])).unwrap();
        assert!(module.forward(&[&x]).unwrap().equal(&want), "{} answers differently", file.display());
    }
}

/// Tensors the module holds in a list are left to torch::jit::load, which
/// loads the whole file then; it says why.
#[test]
fn a_model_the_streaming_loader_cannot_take_loads_the_plain_way() {
    let module = Module::load(&crate::model::tensor_model::tests::scripted("held"), Device::Cpu, None).unwrap();
    let why = module.streamed().plain_because.clone().expect("a list of tensors is not streamed");
    assert!(why.contains("ws") && why.contains("container"), "{why}");
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    assert!(module.forward(&[&x]).unwrap().equal(&Tensor::from_slice(&[3.0f32, 4.0, 5.0])));
}

/// A module whose __setstate__ computes from its tensors while it loads is
/// refused before the placeholder load (it would compute from unwritten
/// bytes) and loaded the plain way: w = 1 + 1.
#[test]
fn a_module_with_setstate_is_loaded_the_plain_way() {
    let module = Module::load(&crate::model::tensor_model::tests::scripted("stateful"), Device::Cpu, None).unwrap();
    let why = module.streamed().plain_because.clone().expect("__setstate__ is not streamed");
    assert!(why.contains("__setstate__"), "{why}");
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    assert!(module.forward(&[&x]).unwrap().equal(&Tensor::from_slice(&[2.0f32, 4.0, 6.0])));
}

/// A truncated or corrupt archive is refused with its path in the message.
#[test]
fn a_truncated_or_corrupt_archive_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(digits()).unwrap();
    let truncated = dir.path().join("truncated.pt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut garbled = bytes.clone();
    garbled[bytes.len() - 200..].fill(0x5a);
    let corrupt = dir.path().join("corrupt.pt");
    std::fs::write(&corrupt, garbled).unwrap();
    for file in [truncated, corrupt] {
        let error = Module::load(&file, Device::Cpu, None).err().expect("a broken archive must be refused");
        assert!(error.0.contains(&file.display().to_string()), "{error}");
    }
}

#[test]
fn a_cast_module_runs_in_its_dtype() {
    let module = Module::load(&digits(), Device::Cpu, Some(Kind::BFloat16)).unwrap();
    let out = module.forward(&[&batch().to_kind(Kind::BFloat16)]).unwrap();
    assert_eq!(out.kind(), Kind::BFloat16);
    assert!(Module::load(&digits(), Device::Cpu, Some(Kind::Int)).is_err(), "only float dtypes are accepted");
}

#[test]
fn failures_are_errors_not_aborts() {
    let missing = Module::load(std::path::Path::new("/nonexistent/model.pt"), Device::Cpu, None);
    assert!(missing.is_err());

    let module = Module::load(&digits(), Device::Cpu, None).unwrap();
    let wrong = Tensor::zeros([2, 3, 5], (Kind::Float, Device::Cpu));
    let error = module.forward(&[&wrong]).expect_err("a 3-D input must fail");
    assert!(!error.0.is_empty());
    // Still usable after a failed call.
    assert!(module.forward(&[&batch()]).is_ok());
}

#[test]
fn a_model_that_returns_no_single_tensor_is_refused() {
    let module = Module::load(&crate::model::tensor_model::tests::scripted("tuple"), Device::Cpu, None).unwrap();
    let x = Tensor::zeros([1, 3], (Kind::Int, Device::Cpu));
    let error = module.forward(&[&x]).expect_err("a tuple is not one tensor");
    assert!(error.0.contains("tuple of 3") && error.0.contains("declares 1 output"), "{error}");
}

/// A dict's tensors come back in the declared order, whatever the
/// model's own; a name the dict lacks is named, with what it has.
#[test]
fn named_outputs_come_back_in_the_declared_order() {
    let file = crate::model::tensor_model::tests::scripted("dict");
    let a = Tensor::ones([2, 2, 3], (Kind::Float, Device::Cpu));
    let b = Tensor::from_slice(&[1i64, -1, 2, -3, 0, 0, 0, 5]).view([2, 4]);
    let names = OutputNames::named(["flag", "sum", "doubled"]).unwrap();
    let module = Module::load(&file, Device::Cpu, None).unwrap().with_outputs(names);
    let outs = module.forward_all(&[&a, &b]).unwrap();
    assert_eq!(outs.iter().map(Tensor::kind).collect::<Vec<_>>(), [Kind::Bool, Kind::Float, Kind::Int64]);
    assert!(outs[2].equal(&(&b * 2)));

    let module = Module::load(&file, Device::Cpu, None).unwrap().with_outputs(OutputNames::named(["sum", "flags", "doubled"]).unwrap());
    let error = module.forward_all(&[&a, &b]).expect_err("no output named flags");
    assert!(error.0.contains("no \"flags\"") && error.0.contains("\"flag\""), "{error}");
}

#[test]
fn cuda_graphs_of_cpu_tensors_fail_cleanly() {
    let module = Module::load(&digits(), Device::Cpu, None).unwrap();
    let error = CudaGraph::capture(&module, vec![batch()], 1).err().expect("CPU inputs cannot be captured");
    if has_cuda_graphs() {
        assert!(error.0.contains("CUDA tensors"), "{error}");
    } else {
        assert!(error.0.contains("without CUDA graph support"), "{error}");
    }
}

#[test]
fn a_host_buffer_holds_what_is_written_into_it() {
    let mut buffer = HostBuffer::new(1000, false).unwrap();
    for (i, b) in buffer.as_mut_slice().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let tensor = buffer.into_tensor();
    assert_eq!(tensor.size(), [1000]);
    let back = Vec::<u8>::try_from(&tensor).unwrap();
    assert!(back.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert!(HostBuffer::new(0, false).unwrap().as_mut_slice().is_empty());
}

#[test]
fn pinned_memory_without_a_gpu_is_an_error_not_an_abort() {
    if tch::Cuda::is_available() {
        let mut buffer = HostBuffer::new(64, true).unwrap();
        buffer.as_mut_slice().fill(7);
        assert_eq!(Vec::<u8>::try_from(&buffer.into_tensor()).unwrap(), vec![7; 64]);
    } else {
        // No driver: libtorch's error (or, if it pins anyway, a buffer).
        let _ = HostBuffer::new(64, true);
    }
}
