//! The host path for a validated v2 batch: each element goes through
//! [`host_call`], as `POST /v1/.../predict` does, all at once, so that the
//! host's batcher can put them in one forward pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::HostTimings;

use super::answer::OutputTensor;
use super::request::Delivery;
use crate::error::ApiError;
use crate::host_client::Link;
use crate::routes::host_call;

/// A request's answer, ready to write, and where its time went.
pub struct Ran {
    pub outputs: Vec<(OutputTensor, Delivery)>,
    /// Batch elements (each one host call).
    pub elements: usize,
    /// Decoding images, part of the input stage.
    pub decode: Duration,
    /// The elements' host queue times, summed (for the statistics extension).
    pub queue: Duration,
    /// The elements' forward passes, summed; elements that shared a batch each count it.
    pub inference: Duration,
}

/// What the host answered for a batch.
pub struct BatchAnswer {
    /// Every class's score for each element, in label order.
    pub scores: Vec<Vec<f32>>,
    /// The elements' host queue times, summed (for the statistics extension).
    pub queue: Duration,
    /// The elements' forward passes, summed; elements that shared a batch each count it.
    pub inference: Duration,
}

pub async fn run_batch(link: &Arc<Link>, elements: &[Vec<u8>], deadline: Instant, budget_ms: u64, tag: &str) -> Result<BatchAnswer, ApiError> {
    let calls = elements.iter().enumerate().map(|(i, pixels)| run_one(link, pixels, deadline, budget_ms, protocol::item_tag(tag, i)));
    // The first failure drops the other calls, which cancels them at the host.
    let answers = futures::future::try_join_all(calls).await?;
    let queue = Duration::from_micros(answers.iter().map(|(_, t)| t.queue_us).sum());
    let inference = Duration::from_micros(answers.iter().map(|(_, t)| t.inference_us).sum());
    Ok(BatchAnswer { scores: answers.into_iter().map(|(s, _)| s).collect(), queue, inference })
}

async fn run_one(link: &Arc<Link>, pixels: &[u8], deadline: Instant, budget_ms: u64, tag: String) -> Result<(Vec<f32>, HostTimings), ApiError> {
    // top_k = every class: the protocol's output is the whole vector.
    let classes = link.model().labels.len();
    let prediction = host_call::classify(link, pixels, classes as u32, deadline, budget_ms, tag).await?;
    Ok((by_class_index(&prediction.top, classes), prediction.timings))
}

/// The host answers best first; the protocol wants label order. A class the
/// host left out (it never should with top_k = classes) scores 0.
fn by_class_index(top: &[(u32, f32)], classes: usize) -> Vec<f32> {
    let mut scores = vec![0.0; classes];
    for &(index, score) in top {
        if let Some(slot) = scores.get_mut(index as usize) {
            *slot = score;
        }
    }
    scores
}

/// The top `k` of one element's scores as Triton's classification strings,
/// `"score:index:label"`, best first.
pub fn classify(scores: &[f32], k: usize, labels: &[String]) -> Vec<String> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| format!("{}:{}:{}", scores[i], i, labels.get(i).map_or("", String::as_str)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_reordered_by_class() {
        assert_eq!(by_class_index(&[(2, 0.7), (0, 0.2), (1, 0.1)], 3), vec![0.2, 0.1, 0.7]);
        // Out-of-range indices are ignored, missing ones are 0.
        assert_eq!(by_class_index(&[(9, 1.0), (1, 0.5)], 3), vec![0.0, 0.5, 0.0]);
    }

    #[test]
    fn classification_strings_are_best_first() {
        let labels: Vec<String> = ["zero", "one", "two"].map(String::from).to_vec();
        assert_eq!(classify(&[0.2, 0.1, 0.7], 2, &labels), vec!["0.7:2:two", "0.2:0:zero"]);
        assert_eq!(classify(&[0.5, 0.5, 0.0], 5, &labels).len(), 3);
    }
}
