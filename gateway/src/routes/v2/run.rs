//! The host path for a validated v2 batch: each element goes through
//! [`host_call`], as `POST /v1/.../predict` does, all at once, so that the
//! host's batcher can put them in one forward pass.

use std::future::Future;
use std::time::{Duration, Instant};

use protocol::HostTimings;

use super::answer::OutputTensor;
use super::images::Prepared;
use super::request::Delivery;
use crate::error::ApiError;
use crate::host_client::Route;
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

/// What the host answered for a batch's elements, in order.
pub struct Answers<T> {
    pub each: Vec<T>,
    /// The elements' host queue times, summed (for the statistics extension).
    pub queue: Duration,
    /// The elements' forward passes, summed; elements that shared a batch each count it.
    pub inference: Duration,
}

/// Sends every element at once, each as its own host call tagged
/// `<id>.<i>`, so that the host's batcher can put them in one forward
/// pass; the first failure drops the other calls, which cancels them at
/// the host. Both model kinds go through here.
pub async fn fan_out<'e, E, T, F, Fut>(elements: &'e [E], tag: &str, call: F) -> Result<Answers<T>, ApiError>
where
    F: Fn(&'e E, String) -> Fut,
    Fut: Future<Output = Result<(T, HostTimings), ApiError>>,
{
    let calls = elements.iter().enumerate().map(|(i, element)| call(element, protocol::item_tag(tag, i)));
    let answers = futures::future::try_join_all(calls).await?;
    let queue = Duration::from_micros(answers.iter().map(|(_, t)| t.queue_us).sum());
    let inference = Duration::from_micros(answers.iter().map(|(_, t)| t.inference_us).sum());
    Ok(Answers { each: answers.into_iter().map(|(a, _)| a).collect(), queue, inference })
}

/// Every class's score for each element, in label order: the classifier
/// asks the host for all of them (the protocol's output is the whole vector).
pub async fn classify_all(
    link: &Route,
    elements: &[Prepared],
    classes: usize,
    deadline: Instant,
    budget_ms: u64,
    tag: &str,
) -> Result<Answers<Vec<f32>>, ApiError> {
    fan_out(elements, tag, |element, tag| async move {
        let (top, timings) = host_call::classify(link, &element.bytes, element.payload, classes as u32, deadline, budget_ms, tag).await?;
        Ok((by_class_index(&top, classes), timings))
    })
    .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_reordered_by_class() {
        assert_eq!(by_class_index(&[(2, 0.7), (0, 0.2), (1, 0.1)], 3), vec![0.2, 0.1, 0.7]);
        // Out-of-range indices are ignored, missing ones are 0.
        assert_eq!(by_class_index(&[(9, 1.0), (1, 0.5)], 3), vec![0.0, 0.5, 0.0]);
    }

}
