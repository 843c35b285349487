//! Four gateways at once, many concurrent requests each: every answer is
//! the right one for its own image, and none is lost.

use std::collections::HashMap;

use futures::StreamExt;
use integration_tests::*;

#[tokio::test]
async fn four_gateways_many_requests_no_answer_lost_or_mixed_up() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateways: Vec<Gateway> = (0..4).map(|_| scratch.start_gateway(&[])).collect();
    for g in &gateways {
        g.wait_ready().await;
    }
    let client = reqwest::Client::new();
    // Reference answers, one request at a time: (label, score) per image.
    let samples = testset("gray8");
    let mut reference = HashMap::new();
    for s in &samples {
        let (status, _, body) = post_image(&client, &gateways[0].predict_url(), s.bytes.clone(), "image/png").await;
        assert_eq!(status, 200);
        reference.insert(s.path.clone(), (top_label(&body), body["predictions"][0]["score"].as_f64().unwrap()));
    }

    // Every image through every gateway twice, 64 requests in flight in all.
    let jobs: Vec<_> = (0..2)
        .flat_map(|_| gateways.iter().flat_map(|g| samples.iter().map(move |s| (g.predict_url(), s))))
        .collect();
    let sent = jobs.len();
    let mut batched = 0;
    let results: Vec<_> = futures::stream::iter(jobs)
        .map(|(url, s)| {
            let client = client.clone();
            async move { (s, post_image(&client, &url, s.bytes.clone(), "image/png").await) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(results.len(), sent, "an answer was lost");
    for (s, (status, _, body)) in results {
        assert_eq!(status, 200, "{}: {body}", s.path.display());
        let (label, score) = &reference[&s.path];
        assert_eq!(&top_label(&body), label, "{}: answer belongs to another image? {body}", s.path.display());
        let got = body["predictions"][0]["score"].as_f64().unwrap();
        assert!((got - score).abs() < 1e-3, "{}: score {got} vs {score} alone", s.path.display());
        if body["batch_size"].as_u64().unwrap() > 1 {
            batched += 1;
        }
    }
    println!("{sent} concurrent requests over 4 gateways all right; {batched} shared a batch");
    let status = gateways[0].host_status().await;
    assert_eq!(status["leased_slots"], 0, "every slot came back: {status}");
    assert_eq!(status["model_loads"], 1);
}
