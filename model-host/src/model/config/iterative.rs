//! model.toml's `[iterative]` table: a model whose answer takes many steps
//! (a diffusion model's denoising loop), which the host runs itself as
//! jobs (see `crate::jobs`), one TorchScript module with three methods:
//!
//! ```toml
//! [iterative]
//! steps = 200                # the most steps a job may run, and the default
//! start = "start"            # start(params int64 [N, P]) -> state float [N, S]
//! step = "step"              # step(state, index int64 [N], steps int64 [N]) -> state
//! finish = "finish"          # finish(state) -> uint8 [N, C, H, W]
//! output = { width = 32, height = 32, channels = 1 }
//! [[iterative.params]]       # the job's integer parameters, in start()'s column order
//! name = "class"
//! min = 0
//! max = 9
//! [batching]
//! max_batch_size = 64        # jobs whose steps run in one call of step()
//! ```
//!
//! Each row of the state is one job's, so jobs join and leave the batch
//! between steps: the model must treat rows independently.

use protocol::ImageShape;
use protocol::jobs::{MAX_JOB_OUTPUT, ParamSpec};
use serde::Deserialize;

use super::{Invalid, ModelKind, is_name};

/// The most steps a model may declare: a bound on a job's time, and on
/// the step counts a client may ask for.
pub const MAX_STEPS: u32 = 100_000;
/// The most parameters a job may have.
pub const MAX_PARAMS: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IterativeToml {
    steps: u32,
    #[serde(default = "start")]
    start: String,
    #[serde(default = "step")]
    step: String,
    #[serde(default = "finish")]
    finish: String,
    output: OutputToml,
    #[serde(default)]
    params: Vec<ParamToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputToml {
    width: u32,
    height: u32,
    channels: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamToml {
    name: String,
    min: i64,
    max: i64,
}

/// A checked `[iterative]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct IterativeConfig {
    pub steps: u32,
    /// The module's method names.
    pub start: String,
    pub step: String,
    pub finish: String,
    pub output: ImageShape,
    pub params: Vec<ParamSpec>,
}

fn start() -> String {
    "start".into()
}

fn step() -> String {
    "step".into()
}

fn finish() -> String {
    "finish".into()
}

pub(super) fn kind(t: IterativeToml) -> Result<ModelKind, Invalid> {
    if !(1..=MAX_STEPS).contains(&t.steps) {
        return Err(("iterative.steps", format!("{} is outside 1..={MAX_STEPS}", t.steps)));
    }
    for method in [&t.start, &t.step, &t.finish] {
        if !is_name(method) {
            return Err(("iterative.start/step/finish", format!("{method:?} is not a method name")));
        }
    }
    let o = &t.output;
    if !(1..=4096).contains(&o.width) || !(1..=4096).contains(&o.height) || !matches!(o.channels, 1 | 3 | 4) {
        return Err(("iterative.output", format!("{}x{}x{}: width and height 1..=4096, channels 1, 3 or 4", o.width, o.height, o.channels)));
    }
    let output = ImageShape { width: o.width, height: o.height, channels: o.channels };
    if output.len() > MAX_JOB_OUTPUT {
        return Err(("iterative.output", format!("{} bytes per job, over the {MAX_JOB_OUTPUT}-byte limit of a result", output.len())));
    }
    if t.params.len() > MAX_PARAMS {
        return Err(("iterative.params", format!("{} parameters, over the limit of {MAX_PARAMS}", t.params.len())));
    }
    let mut params: Vec<ParamSpec> = Vec::new();
    for p in t.params {
        if !is_name(&p.name) || p.name == "steps" {
            return Err(("iterative.params.name", format!("{:?} must be a name other than \"steps\"", p.name)));
        }
        if params.iter().any(|q| q.name == p.name) {
            return Err(("iterative.params.name", format!("{:?} appears twice", p.name)));
        }
        if p.min > p.max {
            return Err(("iterative.params.min", format!("{}: min {} is above max {}", p.name, p.min, p.max)));
        }
        params.push(ParamSpec { name: p.name, min: p.min, max: p.max });
    }
    Ok(ModelKind::Iterative(IterativeConfig { steps: t.steps, start: t.start, step: t.step, finish: t.finish, output, params }))
}

#[cfg(test)]
mod tests {
    use super::super::{ModelKind, validate};

    fn parse(iterative: &str) -> Result<ModelKind, (&'static str, String)> {
        let text = format!("name = \"d\"\nversion = \"1\"\nfile = \"m.pt\"\n[batching]\nmax_batch_size = 8\n{iterative}");
        validate(toml::from_str(&text).expect("valid TOML")).map(|c| c.kind)
    }

    const GOOD: &str = "[iterative]\nsteps = 50\noutput = { width = 32, height = 32, channels = 1 }\n\
                        [[iterative.params]]\nname = \"class\"\nmin = 0\nmax = 9\n";

    #[test]
    fn a_good_table_parses_with_default_method_names() {
        let ModelKind::Iterative(c) = parse(GOOD).expect("valid") else { panic!("not iterative") };
        assert_eq!((c.steps, c.start.as_str(), c.step.as_str(), c.finish.as_str()), (50, "start", "step", "finish"));
        assert_eq!(c.params[0].max, 9);
        assert_eq!(c.output.len(), 1024);
    }

    #[test]
    fn bad_tables_name_the_field_and_limit() {
        let e = parse(&GOOD.replace("steps = 50", "steps = 0")).unwrap_err();
        assert_eq!(e.0, "iterative.steps");
        let e = parse(&GOOD.replace("width = 32, height = 32", "width = 4096, height = 4096")).unwrap_err();
        assert!(e.1.contains("61440-byte limit"), "{e:?}");
        let e = parse(&GOOD.replace("min = 0", "min = 10")).unwrap_err();
        assert_eq!(e.0, "iterative.params.min");
        let e = parse(&GOOD.replace("\"class\"", "\"steps\"")).unwrap_err();
        assert_eq!(e.0, "iterative.params.name");
        let e = parse(&format!("[input]\nwidth = 2\nheight = 2\nchannels = 1\nmean = [0.5]\nstd = [0.5]\n{GOOD}")).unwrap_err();
        assert_eq!(e.0, "iterative");
    }
}
