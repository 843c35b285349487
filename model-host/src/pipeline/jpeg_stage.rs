//! The decode stage: JPEGs decoded on the device as they arrive, before
//! batching, so that decoding overlaps the batches running.
//!
//! One thread per decoder (model.toml's `[host_decode] threads`: one open
//! at READY, the others joining once opened after it). A thread
//! takes whatever JPEG jobs are queued, up to [`MAX_GROUP`] (one when the
//! host is quiet: no wait to fill a group), decodes and resizes them on its
//! own CUDA stream, and passes each job on to the batcher with its input
//! attached. Measured on an H200 (docs/benchmarks.md): decoding on the
//! feeder's path instead, a batch at a time, held 1080p photos to ~1,500
//! img/s, with the GPU idle while the batch decoded.
//!
//! A bad file is answered here (a 400 for its request only), as is a job
//! cancelled or past its deadline before its decode.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::{InferError, Payload};
use tch::Tensor;

use crate::counters::{Counters, Refused};
use crate::model::jpeg_input::{Encoded, JpegInput};
use crate::pipeline::batch::answer;
use crate::pipeline::jobs::Job;
use crate::torch_shim::jpeg::DecodeFailure;

/// The most files one thread decodes at once: at 32 the hardware engines
/// run near their best per call (`jpeg_bench`), and four threads still
/// share a burst of 64.
pub const MAX_GROUP: usize = 32;

/// What decodes a group's files into the model's inputs: the device's
/// decoder, or a unit test's stand-in.
pub trait DecodeJpegs {
    fn decode(&mut self, images: &[Encoded]) -> Vec<Result<Tensor, DecodeFailure>>;
}

impl DecodeJpegs for JpegInput {
    fn decode(&mut self, images: &[Encoded]) -> Vec<Result<Tensor, DecodeFailure>> {
        JpegInput::decode(self, images)
    }
}

/// The running stage, to which more decoders can be added (those opened
/// after READY). It holds a sender of the batcher's queue: drop it once no
/// more decoders are coming, or the model thread never sees that queue
/// close.
pub struct Stage {
    jpegs: Arc<Mutex<Receiver<Job>>>,
    ready: SyncSender<Job>,
    counters: Arc<Counters>,
    threads: usize,
}

/// Starts one thread per decoder, taking jobs from `jpegs` and passing
/// them on to `ready`. The threads end when `jpegs` closes (every
/// connection's queue is gone), dropping their hold on `ready`.
pub fn spawn(decoders: Vec<JpegInput>, jpegs: Receiver<Job>, ready: SyncSender<Job>, counters: Arc<Counters>) -> Stage {
    let mut stage = Stage { jpegs: Arc::new(Mutex::new(jpegs)), ready, counters, threads: 0 };
    stage.add(decoders);
    stage
}

impl Stage {
    /// One more thread per decoder, sharing the queue with the others.
    pub fn add(&mut self, decoders: Vec<JpegInput>) {
        for decoder in decoders {
            let (jpegs, ready, counters) = (self.jpegs.clone(), self.ready.clone(), self.counters.clone());
            std::thread::Builder::new()
                .name(format!("jpeg-{}", self.threads))
                .spawn(move || run(decoder, &jpegs, &ready, &counters))
                .expect("spawning a thread only fails when the process is out of resources");
            self.threads += 1;
        }
    }

    /// Decoder threads running.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn run(mut decoder: JpegInput, jpegs: &Mutex<Receiver<Job>>, ready: &SyncSender<Job>, counters: &Counters) {
    // libtorch work here is a few kernel launches: no OpenMP team of its own.
    tch::set_num_threads(1);
    while let Some(group) = take(jpegs) {
        for job in decode_group(&mut decoder, group, counters) {
            if let Err(unsent) = ready.send(job) {
                // The model thread is gone: the host is stopping.
                answer(unsent.0, Err(InferError::NotReady), counters);
            }
        }
    }
    // Not dropped, for the model thread's reason (device memory freed as
    // the process exits races the CUDA allocator's teardown).
    std::mem::forget(decoder);
}

/// The next group: waits for one job, then takes what else is queued, up
/// to [`MAX_GROUP`]. None once the queue is closed and empty.
fn take(jpegs: &Mutex<Receiver<Job>>) -> Option<Vec<Job>> {
    // A poisoned lock only means another decode thread panicked while
    // holding it; the receiver itself is intact.
    let jpegs = jpegs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let first = jpegs.recv().ok()?;
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match jpegs.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    Some(group)
}

/// Decodes a group's files; each job comes back with its input, or is
/// answered here (abandoned, unreadable slot, bad file, decoder failure).
pub fn decode_group(decoder: &mut impl DecodeJpegs, group: Vec<Job>, counters: &Counters) -> Vec<Job> {
    let now = Instant::now();
    let mut files = Vec::with_capacity(group.len());
    let mut jobs = Vec::with_capacity(group.len());
    for job in group {
        match read_file(&job, now) {
            Ok(file) => {
                files.push(file);
                jobs.push(job);
            }
            Err((refused, e)) => {
                counters.refuse(refused);
                tracing::debug!(request_id = %job.tag, error = ?e, "JPEG not decoded");
                answer(job, Err(e), counters);
            }
        }
    }
    if jobs.is_empty() {
        return jobs;
    }
    let images: Vec<Encoded> = files.iter().map(|(bytes, orientation)| Encoded { bytes, orientation: *orientation }).collect();
    // Traced requests' decode spans: the group decodes together.
    let decoding: Vec<_> = jobs.iter().filter_map(|j| j.spans.as_ref().map(|s| s.jpeg_decode())).collect();
    // A panic in the decode (a libtorch call that panics rather than
    // erring) fails this group as the decoder's fault, not the thread: its
    // jobs are answered and the decoder serves on.
    let outcomes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode(&images))).unwrap_or_else(|_| {
        tracing::error!(files = images.len(), "a JPEG decode panicked; its group is answered as failed");
        images.iter().map(|_| Err(DecodeFailure::Decoder("the JPEG decode panicked".into()))).collect()
    });
    drop(decoding);
    let mut decoded = Vec::with_capacity(jobs.len());
    for (mut job, outcome) in jobs.into_iter().zip(outcomes) {
        match outcome {
            Ok(input) => {
                job.decoded = Some(input);
                decoded.push(job);
            }
            Err(failure) => {
                let e = match failure {
                    DecodeFailure::BadFile(why) => {
                        counters.refuse(Refused::InvalidRequest);
                        InferError::BadImage(why)
                    }
                    DecodeFailure::Decoder(why) => InferError::Model(why),
                };
                tracing::debug!(request_id = %job.tag, error = ?e, "JPEG not decoded");
                answer(job, Err(e), counters);
            }
        }
    }
    counters.jpegs_decoded.fetch_add(decoded.len() as u64, Relaxed);
    decoded
}

/// A job's file and orientation out of its slot, unless nobody waits for
/// it any more.
fn read_file(job: &Job, now: Instant) -> Result<(Vec<u8>, u8), (Refused, InferError)> {
    if job.is_cancelled() {
        return Err((Refused::Cancelled, InferError::Cancelled));
    }
    if job.deadline <= now {
        return Err((Refused::DeadlineExceeded, InferError::DeadlineExceeded));
    }
    let Payload::Jpeg { len, orientation } = job.payload else {
        return Err((Refused::InvalidRequest, InferError::InvalidRequest("no JPEG in the slot".into())));
    };
    let mut file = vec![0u8; len as usize];
    job.segment
        .read_slot(job.slot.index, &mut file)
        .map_err(|e| (Refused::InvalidRequest, InferError::InvalidRequest(format!("slot unreadable: {e}"))))?;
    Ok((file, orientation))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use protocol::shm::naming::segment_name;
    use protocol::shm::{Segment, SlotLayout};

    use super::*;

    fn segment(id: u64) -> Arc<Segment> {
        let mut segment = Segment::create(&segment_name(std::process::id(), id), SlotLayout::new(4, 16).unwrap(), 0o600).unwrap();
        // The mapping outlives the name; nothing is left in /dev/shm.
        segment.unlink().unwrap();
        Arc::new(segment)
    }

    #[test]
    fn a_group_is_what_is_queued_up_to_the_most_and_none_once_closed() {
        let segment = segment(880_101);
        let (reply, _replies) = tokio::sync::mpsc::unbounded_channel();
        let (tx, rx) = std::sync::mpsc::sync_channel(100);
        for i in 0..MAX_GROUP as u32 + 5 {
            tx.send(Job::for_test(&segment, i % 4, Payload::Jpeg { len: 3, orientation: 1 }, &reply)).unwrap();
        }
        let rx = Mutex::new(rx);
        assert_eq!(take(&rx).map(|g| g.len()), Some(MAX_GROUP), "a burst: the most");
        assert_eq!(take(&rx).map(|g| g.len()), Some(5), "what is left, without waiting for more");
        drop(tx);
        assert!(take(&rx).is_none(), "closed and empty");
    }

    /// Answers by position: a tensor, a bad file, or the decoder's failure;
    /// or panics.
    struct StandIn(Option<Vec<u8>>);

    impl DecodeJpegs for StandIn {
        fn decode(&mut self, images: &[Encoded]) -> Vec<Result<Tensor, DecodeFailure>> {
            let Some(kinds) = &self.0 else { panic!("a libtorch call panicked") };
            assert_eq!(images.len(), kinds.len());
            kinds
                .iter()
                .zip(images)
                .map(|(kind, image)| match kind {
                    0 => Ok(Tensor::from_slice(image.bytes)),
                    1 => Err(DecodeFailure::BadFile("corrupt scan".into())),
                    _ => Err(DecodeFailure::Decoder("device out of memory".into())),
                })
                .collect()
        }
    }

    #[test]
    fn each_file_fails_alone_and_a_panic_fails_only_its_group() {
        let segment = segment(880_103);
        for (slot, byte) in [(0, 7u8), (1, 8), (2, 9)] {
            segment.write_slot(slot, &[byte; 3]).unwrap();
        }
        let (reply, mut replies) = tokio::sync::mpsc::unbounded_channel();
        let group = || (0..3).map(|i| Job::for_test(&segment, i, Payload::Jpeg { len: 3, orientation: 1 }, &reply)).collect::<Vec<_>>();
        let counters = Counters::new(&[1]);
        counters.in_flight.store(6, Relaxed);

        let passed = decode_group(&mut StandIn(Some(vec![1, 0, 2])), group(), &counters);
        assert_eq!(passed.len(), 1, "only the good file goes on");
        assert_eq!(passed[0].request_id, 1);
        assert_eq!(Vec::<u8>::try_from(passed[0].decoded.as_ref().expect("its input")).unwrap(), vec![8; 3], "its own file's");
        let mut answered: Vec<_> = std::iter::from_fn(|| replies.try_recv().ok()).map(|d| (d.request_id, d.result)).collect();
        answered.sort_by_key(|(id, _)| *id);
        assert!(matches!(&answered[0], (0, Err(InferError::BadImage(why))) if why.contains("corrupt")), "a 400: {answered:?}");
        assert!(matches!(&answered[1], (2, Err(InferError::Model(_)))), "a 500: {answered:?}");
        assert_eq!(counters.jpegs_decoded.load(Relaxed), 1);

        assert!(decode_group(&mut StandIn(None), group(), &counters).is_empty());
        let answered: Vec<_> = std::iter::from_fn(|| replies.try_recv().ok()).map(|d| d.result).collect();
        assert_eq!(answered.len(), 3, "every job of the group answered");
        assert!(answered.iter().all(|r| matches!(r, Err(InferError::Model(why)) if why.contains("panicked"))), "{answered:?}");
        assert_eq!(counters.in_flight.load(Relaxed), 1, "five answered here, one passed on");
    }

    #[test]
    fn a_job_nobody_waits_for_or_without_a_readable_file_is_not_decoded() {
        let segment = segment(880_102);
        segment.write_slot(1, b"\xff\xd8\xff").unwrap();
        let (reply, _replies) = tokio::sync::mpsc::unbounded_channel();
        let jpeg = |len| Payload::Jpeg { len, orientation: 6 };
        let now = Instant::now();

        let good = Job::for_test(&segment, 1, jpeg(3), &reply);
        assert_eq!(read_file(&good, now).unwrap(), (b"\xff\xd8\xff".to_vec(), 6));

        let cancelled = Job::for_test(&segment, 1, jpeg(3), &reply);
        cancelled.cancelled.store(true, Relaxed);
        assert!(matches!(read_file(&cancelled, now), Err((Refused::Cancelled, InferError::Cancelled))));

        let mut late = Job::for_test(&segment, 1, jpeg(3), &reply);
        late.deadline = now - Duration::from_millis(1);
        assert!(matches!(read_file(&late, now), Err((Refused::DeadlineExceeded, InferError::DeadlineExceeded))));

        let over = Job::for_test(&segment, 1, jpeg(17), &reply);
        assert!(matches!(read_file(&over, now), Err((Refused::InvalidRequest, InferError::InvalidRequest(why))) if why.contains("slot unreadable")));

        let pixels = Job::for_test(&segment, 1, Payload::Input, &reply);
        assert!(matches!(read_file(&pixels, now), Err((_, InferError::InvalidRequest(_)))));
    }
}
