//! A JSON answer in one buffer. axum's `Json` serialises into a 128-byte
//! `BytesMut` through its `Writer`: an answer's 170-odd small writes each
//! go through `put_slice` (and the buffer grows twice), 8.8k instructions
//! of a raw-pixels request's 113k (`bench/gateway_instructions.py`, with
//! callgrind). Here serde_json writes into a `Vec` sized for a typical
//! answer, and the body takes the `Vec` without a copy.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;

/// Enough for a classifier's top 5 and its timings, or a detector's
/// few boxes, without growing.
const TYPICAL_ANSWER_BYTES: usize = 512;

/// `value` as an `application/json` response.
pub fn json_answer<T: Serialize>(value: &T) -> Response {
    let mut body = Vec::with_capacity(TYPICAL_ANSWER_BYTES);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
        Err(e) => ApiError::Internal(format!("serialising the answer: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_body_is_the_values_json() {
        let response = json_answer(&serde_json::json!({"label": "7", "score": 0.5, "escaped": "a\"b"}));
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let back: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, serde_json::json!({"label": "7", "score": 0.5, "escaped": "a\"b"}));
    }
}
