//! The image classifier: an uploaded batch of normalised images in (see
//! [`crate::model::preprocess`]), top-k (class, probability) out.
//!
//! Everything model-specific (normalisation, layout, dtype) happens in the
//! host, on the model's device, so gateways only ever produce uint8 pixels.
//! The module runs as every kind does ([`crate::model::optimized`]):
//! frozen, cast, and on a GPU replayed from CUDA graphs; what is the
//! classifier's own is the softmax and top-k after the forward pass.

use std::path::Path;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::model::ModelError;
use crate::model::config::{ClassifierConfig, OptimizationConfig};
use crate::model::Input;
use crate::model::optimized::OptimizedModule;
use crate::model::readback::ToHost;
use crate::model::warm_up::OutputCheck;
use crate::torch_shim::OutputNames;

pub struct ImageClassifier {
    /// The module, its graphs and its warm-up.
    module: OptimizedModule,
    classes: i64,
    softmax: bool,
}

/// A batch whose forward pass and top-k have been queued on the device.
/// On a GPU the work runs asynchronously: the feeder thread can prepare the
/// next batch while this one computes, and only [`Launched::collect`]
/// waits for it.
pub struct Launched {
    /// The top-k values and indices.
    top: ToHost,
    k: i64,
}

impl ImageClassifier {
    pub fn load(file: &Path, config: &ClassifierConfig, optimization: &OptimizationConfig, device: Device) -> Result<Self, ModelError> {
        Self::load_reporting(file, config, optimization, device, &mut |_, _| {})
    }

    /// [`Self::load`], telling `progress` (bytes read, file size) as the
    /// file is read.
    pub fn load_reporting(
        file: &Path,
        config: &ClassifierConfig,
        optimization: &OptimizationConfig,
        device: Device,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, ModelError> {
        let classes = config.output.labels.len() as i64;
        let check: OutputCheck = Arc::new(move |outs: &[Tensor], batch| check_output(&outs[0], batch, classes));
        let module = OptimizedModule::load(file, optimization, device, OutputNames::One, check, progress)?;
        Ok(Self { module, classes, softmax: config.output.softmax })
    }

    pub fn classes(&self) -> usize {
        self.classes as usize
    }

    /// The module, for warm-up and graphs.
    pub fn module(&self) -> &OptimizedModule {
        &self.module
    }

    pub fn module_mut(&mut self) -> &mut OptimizedModule {
        &mut self.module
    }

    /// Queues the forward pass and top-k on an uploaded batch, without
    /// waiting for them on a GPU.
    pub fn launch(&self, input: Input, k: usize) -> Result<Launched, ModelError> {
        let b = input.batch;
        let k = k.clamp(1, self.classes()) as i64;
        tch::no_grad(|| {
            let outs = self.module.forward(input)?;
            check_output(&outs[0], b, self.classes)?;
            queue_answers(&outs[0], self.softmax, k)
        })
    }
}

/// Queues the softmax (if the model wants one), the top-k and their copy
/// back to host memory, after the forward pass that makes `out`.
fn queue_answers(out: &Tensor, softmax: bool, k: i64) -> Result<Launched, ModelError> {
    // Softmax and top-k make new tensors: the graph's output may be
    // overwritten by the next replay as soon as they are queued.
    let scores = if softmax { out.f_softmax(1, Kind::Float)? } else { out.f_to_kind(Kind::Float)? };
    let (values, indices) = scores.f_topk(k, 1, true, true)?;
    Ok(Launched { top: ToHost::queue(vec![values, indices])?, k })
}

/// On a GPU, starts a thread that queues and collects the answers of a
/// made-up output of each batch shape, with k = 1 and the gateways'
/// default of 5, so that what comes after the forward pass is ready before
/// READY: CUDA loads the softmax, top-k and sort kernels on their first
/// launch, and the read-back takes page-locked blocks of each size from
/// libtorch's caching allocator. Both are process-wide, so a thread beside
/// the model file's load does it for the model thread. The warm-up passes
/// run the forward pass alone; without this the first batch after READY
/// took 47 ms on an H200, and at 256 clients the requests queued behind it
/// made p99 in the first second 3x the steady p99 (docs/benchmarks.md).
/// Join it before the warm-up captures graphs; an error only means the
/// first batches pay for it. None off the GPU.
pub fn prime_answers(config: &ClassifierConfig, dtype: Kind, device: Device, shapes: Vec<u32>) -> Option<std::thread::JoinHandle<()>> {
    if !device.is_cuda() {
        return None;
    }
    let (classes, softmax) = (config.output.labels.len() as i64, config.output.softmax);
    let prime = move || -> Result<(), ModelError> {
        let started = std::time::Instant::now();
        tch::no_grad(|| {
            for &n in &shapes {
                let out = Tensor::f_zeros([i64::from(n), classes], (dtype, device))?;
                for k in [1, 5] {
                    queue_answers(&out, softmax, k.min(classes))?.collect()?;
                }
            }
            Ok::<_, ModelError>(())
        })?;
        tracing::info!(shapes = shapes.len(), ms = started.elapsed().as_secs_f64() * 1e3, "softmax, top-k and read-back loaded");
        Ok(())
    };
    std::thread::Builder::new()
        .name("prime-answers".into())
        .spawn(move || {
            if let Err(e) = prime() {
                tracing::debug!(error = %e, "priming the answers' kernels failed; the first batches will load them");
            }
        })
        .ok()
}

fn check_output(out: &Tensor, batch: i64, classes: i64) -> Result<(), ModelError> {
    let size = out.size();
    if size != [batch, classes] {
        return Err(ModelError::OutputShape { got: size, batch, classes });
    }
    Ok(())
}

impl Launched {
    /// Waits for the batch and reads its top-k back: one row per image,
    /// padding rows included.
    pub fn collect(self) -> Result<Vec<Vec<(u32, f32)>>, ModelError> {
        let Launched { top, k } = self;
        let [values, indices] = <[Tensor; 2]>::try_from(top.wait()?).expect("queued as two tensors");
        let values = Vec::<f32>::try_from(values.f_flatten(0, -1)?)?;
        let indices = Vec::<i64>::try_from(indices.f_flatten(0, -1)?)?;
        Ok(values
            .chunks(k as usize)
            .zip(indices.chunks(k as usize))
            .map(|(v, i)| i.iter().zip(v).map(|(&i, &v)| (i as u32, v)).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::model::warm_up::{GraphReport, Late, LatePoll, LateWarmUp, WarmShape};
    use crate::model::config as model_config;

    fn digits() -> (PathBuf, model_config::LoadedConfig) {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/digits"));
        assert!(dir.join("model.pt").exists(), "models/digits is missing: run scripts/setup first");
        let loaded = model_config::load(&dir).unwrap();
        (dir.join("model.pt"), loaded)
    }

    fn inputs(shapes: &[i64]) -> Vec<WarmShape> {
        let input = |n| Input { tensors: vec![Tensor::rand([n, 1, 32, 32], (Kind::Float, Device::Cpu))], batch: n };
        // A capture input too: off the GPU no graph is wanted, so it is unused.
        shapes.iter().map(|&n| WarmShape { warm: input(n), capture: Some(input(n)) }).collect()
    }

    #[test]
    fn warm_up_runs_every_shape_on_several_threads() {
        let (file, loaded) = digits();
        let config = loaded.config.classifier().unwrap();
        let mut model = ImageClassifier::load(&file, config, &loaded.config.optimization, Device::Cpu).unwrap();
        let report = model.module_mut().warm_up_parallel(inputs(&[1, 2, 4, 8, 16, 32]), 3, &|| {}).unwrap();
        assert_eq!(report, GraphReport::default(), "no graphs off the GPU");
        // More threads than shapes, and no shapes at all, are fine too.
        model.module_mut().warm_up_parallel(inputs(&[1, 2]), 8, &|| {}).unwrap();
        model.module_mut().warm_up_parallel(Vec::new(), 4, &|| {}).unwrap();
    }

    /// The answers' priming runs on a GPU only (where it is checked to end
    /// and leave the answers' path working); a CPU loads nothing lazily.
    #[test]
    fn the_answers_path_is_primed_on_a_gpu_and_left_working() {
        let (_, loaded) = digits();
        let config = loaded.config.classifier().unwrap();
        assert!(prime_answers(config, Kind::Float, Device::Cpu, vec![1, 8]).is_none());
        if !tch::Cuda::is_available() {
            return;
        }
        prime_answers(config, Kind::Half, Device::Cuda(0), vec![1, 8]).expect("a thread on a GPU").join().unwrap();
        let out = Tensor::rand([8, 10], (Kind::Half, Device::Cuda(0)));
        let rows = queue_answers(&out, true, 5).unwrap().collect().unwrap();
        assert_eq!((rows.len(), rows[0].len()), (8, 5));
    }

    /// Why two answers to the same pixels agree only to rounding (the
    /// Triton client checks compare them with a tolerance of 1e-6): the
    /// batcher puts a request in whatever batch is forming, at whatever row,
    /// and libtorch's CPU forward pass rounds a row by its place.
    #[test]
    fn an_images_answer_depends_on_its_batch_only_by_rounding() {
        let (file, loaded) = digits();
        let config = loaded.config.classifier().unwrap();
        let model = ImageClassifier::load(&file, config, &loaded.config.optimization, Device::Cpu).unwrap();
        tch::manual_seed(7);
        let batch = Tensor::rand([8, 1, 32, 32], (Kind::Float, Device::Cpu));
        let answers = |x: Tensor| {
            let b = x.size()[0];
            let rows = model.launch(Input { tensors: vec![x], batch: b }, 10).unwrap().collect().unwrap();
            rows.into_iter().map(|mut row| {
                row.sort_by_key(|&(class, _)| class);
                row.into_iter().map(|(_, p)| p).collect::<Vec<f32>>()
            }).collect::<Vec<_>>()
        };
        let alone = answers(batch.narrow(0, 3, 1));
        let in_order = answers(batch.shallow_clone());
        let reversed = answers(batch.flip([0]));
        for other in [&in_order[3], &reversed[4]] {
            let worst = alone[0].iter().zip(other).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-6, "row 3 alone and in a batch differ by {worst}");
        }
    }

    #[test]
    fn warm_up_on_threads_still_checks_each_output() {
        let (file, loaded) = digits();
        let mut config = loaded.config.classifier().unwrap().clone();
        config.output.labels.pop();
        let mut model = ImageClassifier::load(&file, &config, &loaded.config.optimization, Device::Cpu).unwrap();
        let err = model.module_mut().warm_up_parallel(inputs(&[1, 4, 8]), 2, &|| {}).unwrap_err();
        assert!(matches!(err, ModelError::OutputShape { classes: 9, .. }), "{err:?}");
    }

    /// Polls until the warm-up after READY is over; what it handed over.
    fn poll_to_the_end(late: &mut LateWarmUp) -> Vec<Late> {
        let mut all = Vec::new();
        loop {
            match late.poll() {
                LatePoll::Captured(graphs) => all.extend(graphs),
                LatePoll::Done(_) => return all,
            }
            std::thread::yield_now();
        }
    }

    /// The warm-up after READY runs beside the model (on the CPU it warms
    /// and captures nothing: the mechanism, not the graphs), and ends
    /// whether its inputs could be made or not; the model serves
    /// meanwhile from its own thread.
    #[test]
    fn the_warm_up_after_ready_runs_beside_serving_and_ends() {
        let (file, loaded) = digits();
        let config = loaded.config.classifier().unwrap();
        let model = ImageClassifier::load(&file, config, &loaded.config.optimization, Device::Cpu).unwrap();
        let (warming, finish) = (std::sync::Arc::new(std::sync::Barrier::new(2)), std::sync::Arc::new(std::sync::Barrier::new(2)));
        let (w, f) = (warming.clone(), finish.clone());
        let mut late = model
            .module().warm_up_later(Device::Cpu, move |_| {
                w.wait();
                f.wait();
                Ok(inputs(&[2, 8, 16]))
            }, 2)
            .unwrap();
        // Its thread is in `make`: a batch runs and nothing is handed over.
        warming.wait();
        let rows = model.launch(Input { tensors: vec![Tensor::rand([3, 1, 32, 32], (Kind::Float, Device::Cpu))], batch: 3 }, 2).unwrap().collect().unwrap();
        assert_eq!(rows.len(), 3);
        assert!(matches!(late.poll(), LatePoll::Captured(graphs) if graphs.is_empty()));
        finish.wait();
        assert!(poll_to_the_end(&mut late).is_empty(), "no graphs off the GPU");

        let mut failing = model.module().warm_up_later(Device::Cpu, |_| Err(ModelError::Forward("no inputs".into())), 2).unwrap();
        assert!(poll_to_the_end(&mut failing).is_empty());
    }
}
