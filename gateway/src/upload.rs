//! Validates the edge of a predict request: the body's size and type.
//!
//! Turns a raw HTTP body into an [`Upload`] (bytes plus a known image
//! format) or a client error. Nothing past this point sees raw input.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use image::ImageFormat;

use crate::error::ApiError;
use service::telemetry;
use tracing::Instrument;

/// An image body whose format we know how to decode.
pub struct Upload {
    pub bytes: Bytes,
    pub format: Format,
}

/// What the body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An encoded image, decoded and resized by the gateway.
    Encoded(ImageFormat),
    /// Already the model's input: uint8, height x width x channels
    /// ([`PIXELS_CONTENT_TYPE`]); written to the slot as it is.
    Pixels,
}

/// The content type of a body of raw model-input pixels.
pub const PIXELS_CONTENT_TYPE: &str = "application/x-pixels";

/// Reads the body, refusing it from Content-Length before reading when the
/// header already says it is too large, and stopping at `limit` otherwise
/// (chunked bodies have no Content-Length). Traced as `read_body`.
pub async fn read_body(body: Body, headers: &HeaderMap, limit: usize, within: Duration) -> Result<Bytes, ApiError> {
    let ms = within.as_millis() as u64;
    let span = telemetry::span(|| tracing::info_span!("read_body", http.request.body.size = tracing::field::Empty));
    let read = tokio::time::timeout(within, read_limited(body, headers, limit))
        .instrument(span.clone())
        .await
        .map_err(|_| ApiError::BodyTimeout { ms })?;
    if let Ok(body) = &read {
        span.record("http.request.body.size", body.len() as i64);
    }
    read
}

async fn read_limited(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&len| len > limit as u64) {
        tokio::spawn(discard_rest(body, limit));
        return Err(ApiError::BodyTooLarge { size: len.to_string(), limit });
    }
    let mut body = body;
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |len| len as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if crate::compression::is_decompression_error(&e) {
                ApiError::CorruptEncoding(e.to_string())
            } else {
                ApiError::InvalidRequest { field: "body", problem: format!("could not be read: {e}") }
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                tokio::spawn(discard_rest(body, limit));
                return Err(ApiError::BodyTooLarge { size: "more".into(), limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and drops what the client is still sending after we refused its
/// body, so that it gets to read our 413 instead of a reset connection
/// (hyper does no lingering close). Bounded in bytes and time, and never
/// stored: past either bound the connection is simply closed.
async fn discard_rest(mut body: Body, limit: usize) {
    let cap = limit.saturating_add(1 << 20);
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > cap {
                return;
            }
        }
    })
    .await;
}

/// How long a refused body may keep its connection busy.
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Finds the image in a raw or multipart body.
pub async fn extract_image(headers: &HeaderMap, body: Bytes) -> Result<Upload, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if essence(content_type) == "multipart/form-data" {
        return from_multipart(content_type, body).await;
    }
    if essence(content_type) == PIXELS_CONTENT_TYPE {
        return Ok(Upload { bytes: body, format: Format::Pixels });
    }
    let format = Format::Encoded(format_for(content_type, &body)?);
    Ok(Upload { bytes: body, format })
}

/// The media type without parameters, lower-cased.
fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The declared type decides; an absent or generic type is sniffed from
/// the magic bytes.
fn format_for(content_type: &str, bytes: &[u8]) -> Result<ImageFormat, ApiError> {
    match essence(content_type).as_str() {
        "image/png" => Ok(ImageFormat::Png),
        "image/jpeg" | "image/jpg" | "image/pjpeg" => Ok(ImageFormat::Jpeg),
        "image/webp" => Ok(ImageFormat::WebP),
        "" | "application/octet-stream" => match image::guess_format(bytes) {
            Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => Ok(f),
            _ => Err(ApiError::UnsupportedMediaType(format!(
                "{} (content not recognised as PNG, JPEG or WebP)",
                if content_type.is_empty() { "none" } else { content_type }
            ))),
        },
        _ => Err(ApiError::UnsupportedMediaType(content_type.to_string())),
    }
}

/// Takes the field named "image" or "file", else the first field with a file name.
async fn from_multipart(content_type: &str, body: Bytes) -> Result<Upload, ApiError> {
    let invalid = |problem: String| ApiError::InvalidRequest { field: "multipart body", problem };
    let boundary = multer::parse_boundary(content_type).map_err(|e| invalid(e.to_string()))?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    while let Some(field) = multipart.next_field().await.map_err(|e| invalid(e.to_string()))? {
        let named = matches!(field.name(), Some("image" | "file"));
        if !named && field.file_name().is_none() {
            continue;
        }
        let field_type = field.content_type().map(|m| m.to_string()).unwrap_or_default();
        let bytes = field.bytes().await.map_err(|e| invalid(e.to_string()))?;
        let format = Format::Encoded(format_for(&field_type, &bytes)?);
        return Ok(Upload { bytes, format });
    }
    Err(invalid("no field named \"image\" or \"file\", and no file field".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn declared_types_win_and_generic_ones_are_sniffed() {
        assert_eq!(format_for("image/png", b"").unwrap(), ImageFormat::Png);
        assert_eq!(format_for("Image/JPEG; q=1", b"").unwrap(), ImageFormat::Jpeg);
        assert_eq!(format_for("application/octet-stream", PNG_MAGIC).unwrap(), ImageFormat::Png);
        assert_eq!(format_for("", PNG_MAGIC).unwrap(), ImageFormat::Png);
        assert!(matches!(format_for("text/plain", PNG_MAGIC), Err(ApiError::UnsupportedMediaType(_))));
        assert!(matches!(format_for("image/gif", b"GIF89a"), Err(ApiError::UnsupportedMediaType(_))));
        assert!(matches!(format_for("", b"hello"), Err(ApiError::UnsupportedMediaType(_))));
    }

    #[tokio::test]
    async fn body_limit_from_header_and_from_stream() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        let err = read_body(Body::from("hello world"), &headers, 10, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ApiError::BodyTooLarge { limit: 10, .. }));
        // No Content-Length (as with chunked encoding): the stream is cut at the limit.
        let err = read_body(Body::from("hello world"), &HeaderMap::new(), 10, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ApiError::BodyTooLarge { limit: 10, .. }));
        let ok = read_body(Body::from("0123456789"), &HeaderMap::new(), 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(&ok[..], b"0123456789");
    }

    #[tokio::test]
    async fn multipart_field_is_found() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"d.png\"\r\n\
                    Content-Type: image/png\r\n\r\nPNGDATA\r\n--XyZ--\r\n";
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "multipart/form-data; boundary=XyZ".parse().unwrap());
        let upload = extract_image(&headers, Bytes::from(body)).await.unwrap();
        assert_eq!(upload.format, Format::Encoded(ImageFormat::Png));
        assert_eq!(&upload.bytes[..], b"PNGDATA");
    }
}
