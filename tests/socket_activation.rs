//! The gateway takes its listening socket from systemd (LISTEN_FDS), here
//! through `systemd-socket-activate`, the tool systemd ships for this.

use std::time::Duration;

use integration_tests::*;

#[tokio::test]
async fn gateway_serves_on_a_socket_activated_listener() {
    let scratch = Scratch::new();
    let _host = scratch.start_host(&[]);
    let gateway = scratch.start_gateway_socket_activated();
    gateway.wait_for("/health/live", Duration::from_secs(10)).await;
    gateway.wait_ready().await;
    let sample = testset("gray8").remove(0);
    let (status, _, body) = post_image(&reqwest::Client::new(), &gateway.predict_url(), sample.bytes, "image/png").await;
    assert_eq!(status, 200, "{body}");
    let log = gateway.process.log();
    assert!(log.contains("socket_from=\"LISTEN_FDS\""), "gateway bound its own socket:\n{log}");
}
