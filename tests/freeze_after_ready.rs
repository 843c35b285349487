//! A model frozen after READY (model.toml `freeze_after_ready = true`),
//! through the real binaries: READY comes with the module as loaded, the
//! freeze runs beside serving, and the frozen module takes over. Requests
//! sent all along (before, during and after the hand-over) are every one
//! answered, each with its own digit, and the log tells the order of it.

use std::time::{Duration, Instant};

use integration_tests::{Scratch, digits_model, model_toml_copy, post_image, testset, top_label};

/// The log lines of the freeze after READY, in the order they must come.
const IN_ORDER: [&str; 4] = [
    "the module is frozen after READY; until then it serves as loaded",
    "ready: startup breakdown",
    "module frozen and optimized for inference after READY",
    "serving the module frozen after READY",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_frozen_after_ready_answers_throughout_and_hands_over() {
    let scratch = Scratch::new();
    let model = model_toml_copy(&digits_model(), scratch.dir.path(), "later.toml", |text| {
        assert!(!text.contains("[optimization]"), "the digits model.toml has an [optimization] table now: edit it instead");
        format!("{text}\n[optimization]\nfreeze_after_ready = true\n")
    });
    let host = scratch.start_host(&["--model", &model]);
    let gateway = scratch.start_gateway(&[]);
    gateway.wait_ready().await;

    let (client, url, samples) = (reqwest::Client::new(), gateway.predict_url(), testset("gray8"));
    let mut answered = 0;
    let mut rounds_after_done = 0;
    let started = Instant::now();
    // Rounds of 16 requests at once until one whole round ran after the
    // warm-up after READY (the freeze and every shape again) ended.
    while rounds_after_done < 1 {
        let done = host.log().contains("warm-up after READY done");
        let calls = samples.iter().cycle().skip(answered).take(16).map(|sample| {
            let (client, url, bytes, label) = (client.clone(), url.clone(), sample.bytes.clone(), sample.label.clone());
            async move {
                let (status, _, body) = post_image(&client, &url, bytes, "image/png").await;
                assert_eq!(status, 200, "{body}");
                assert_eq!(top_label(&body), label, "a wrong answer while the module was frozen beside serving");
            }
        });
        futures::future::join_all(calls).await;
        answered += 16;
        rounds_after_done += usize::from(done);
        assert!(started.elapsed() < Duration::from_secs(120), "no end to the warm-up after READY in 120 s:\n{}", host.log());
    }

    let log = host.log();
    let at: Vec<usize> = IN_ORDER.iter().map(|line| log.find(line).unwrap_or_else(|| panic!("no {line:?} in the host's log:\n{log}"))).collect();
    assert!(at.is_sorted(), "the freeze after READY's lines out of order ({at:?}):\n{log}");
    assert!(!log.contains("cannot freeze"), "{log}");
}
