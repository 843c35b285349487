//! Compressed bodies, both ways, as Triton's HTTP endpoint offers them.
//!
//! - In: a body with `Content-Encoding: gzip` or `deflate` is decompressed
//!   as the handler reads it, so the body limit of [`crate::upload::read_body`]
//!   counts decompressed bytes (a gzip bomb stops at the limit with 413) and
//!   `Inference-Header-Content-Length` counts in the decompressed body, as in
//!   Triton. A corrupt stream is a 400 ([`ApiError::CorruptEncoding`]); any
//!   other encoding a 415 ([`check_content_encoding`]).
//! - Out: an answer is compressed when the client's `Accept-Encoding` asks
//!   for gzip or deflate, with tower-http's default predicate: not below 32
//!   bytes, never images or event streams; binary tensor answers
//!   (`application/octet-stream`) are compressed like JSON.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;

use crate::error::ApiError;

/// The request encodings decompressed here.
const ACCEPTED: &[&str] = &["gzip", "deflate", "identity"];

/// Decompresses request bodies (innermost of the three layers; see
/// `routes::router` for their order).
pub fn request_decompression() -> RequestDecompressionLayer {
    RequestDecompressionLayer::new().gzip(true).deflate(true)
}

/// Compresses answers (outermost of the three).
pub fn response_compression() -> CompressionLayer {
    CompressionLayer::new().gzip(true).deflate(true)
}

/// Middleware: 415 through [`ApiError`] for an encoding other than gzip,
/// deflate or identity (tower-http's own 415 has no body), and the
/// accepted ones in the exact lower case tower-http matches.
pub async fn check_content_encoding(mut request: Request, next: Next) -> Response {
    if let Some(value) = request.headers().get(header::CONTENT_ENCODING) {
        let given = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let normalized = given.trim().to_ascii_lowercase();
        let Some(known) = ACCEPTED.iter().find(|&&e| e == normalized) else {
            return ApiError::UnsupportedContentEncoding(given).into_response();
        };
        request.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static(known));
    }
    next.run(request).await
}

/// Whether a body-read error came from the decompressor rather than the
/// connection: tower-http reports a corrupt stream as a bare `io::Error`,
/// while transport errors are hyper's (wrapped by axum).
pub fn is_decompression_error(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if e.is::<hyper::Error>() {
            return false;
        }
        if e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    const LIMIT: usize = 1 << 20;

    /// Echoes the body read as the handlers read it, with their limit.
    fn app() -> Router {
        async fn echo(headers: HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
            Ok(crate::upload::read_body(body, &headers, LIMIT, Duration::from_secs(5)).await?.to_vec())
        }
        Router::new()
            .route("/echo", post(echo))
            .layer(request_decompression())
            .layer(axum::middleware::from_fn(check_content_encoding))
            .layer(response_compression())
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    async fn post_echo(body: Vec<u8>, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut request = axum::http::Request::post("/echo");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = app().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
    }

    #[tokio::test]
    async fn gzip_and_deflate_bodies_arrive_decompressed() {
        let text = b"{\"inputs\": []}".repeat(100);
        let (status, _, body) = post_echo(gzip(&text), &[("content-encoding", "gzip")]).await;
        assert_eq!((status, body.as_slice()), (StatusCode::OK, text.as_slice()));
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&text).unwrap();
        let (status, _, body) = post_echo(e.finish().unwrap(), &[("content-encoding", "Deflate")]).await;
        assert_eq!((status, body.as_slice()), (StatusCode::OK, text.as_slice()));
        let (status, _, body) = post_echo(text.clone(), &[("content-encoding", "identity")]).await;
        assert_eq!((status, body.as_slice()), (StatusCode::OK, text.as_slice()));
    }

    #[tokio::test]
    async fn corrupt_unknown_and_oversized_bodies_are_client_errors() {
        let mut corrupt = gzip(&[7u8; 5000]);
        let middle = corrupt.len() / 2;
        corrupt[middle..].iter_mut().for_each(|b| *b ^= 0x5a);
        let (status, _, body) = post_echo(corrupt, &[("content-encoding", "gzip")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("could not be decompressed"));
        let (status, _, body) = post_echo(b"not gzip at all".to_vec(), &[("content-encoding", "gzip")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));

        let (status, _, body) = post_echo(b"x".to_vec(), &[("content-encoding", "br")]).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(String::from_utf8_lossy(&body).contains("unsupported_content_encoding"));

        // 64 MiB of zeros is ~64 KiB of gzip: stopped at the decompressed limit.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        let (status, _, body) = post_echo(bomb, &[("content-encoding", "gzip")]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", String::from_utf8_lossy(&body));
    }

    #[tokio::test]
    async fn answers_are_compressed_when_asked() {
        let text = b"{\"outputs\": [1, 2, 3]}".repeat(20);
        let (status, headers, body) = post_echo(text.clone(), &[("accept-encoding", "gzip")]).await;
        assert_eq!((status, &headers[header::CONTENT_ENCODING]), (StatusCode::OK, &HeaderValue::from_static("gzip")));
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(body.as_slice()).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, text);
        let (_, headers, body) = post_echo(text.clone(), &[]).await;
        assert!(!headers.contains_key(header::CONTENT_ENCODING));
        assert_eq!(body, text);
    }
}
