//! From the job queue to the answers: batching and the model's thread.
//!
//! - [`jobs`]: the bounded queue the connections submit to.
//! - [`jpeg_stage`]: JPEGs decoded on the device as they arrive.
//! - [`batcher`] + [`batch_policy`]: when to close a batch (the policy is
//!   a plain struct, unit-tested apart from the task).
//! - [`feeder`]: forms and uploads the next batch while the current runs,
//!   padded to one of the [`ready_shapes`].
//! - [`batch`]: gather slots, upload, launch, answer.
//! - [`model_thread`]: load, warm up, then run batches forever.
//! - [`spin`]: the two threads' waits, polling briefly before sleeping.
//! - [`spans`]: a traced request's and batch's OpenTelemetry spans.

pub mod batch;
pub mod batch_policy;
pub mod batcher;
pub mod feeder;
pub mod jobs;
pub mod jpeg_stage;
pub mod model_thread;
pub mod ready_shapes;
pub mod spans;
pub mod spin;
