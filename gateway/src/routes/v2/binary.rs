//! The binary tensor data extension, for requests: the body is a JSON
//! header of `Inference-Header-Content-Length` bytes followed by the raw
//! data of each input that declares `parameters.binary_data_size`, in input
//! order. BYTES tensors are a sequence of elements, each a u32
//! little-endian length and that many bytes.
//!
//! Binary outputs in answers are written by [`super::answer`].

use axum::http::HeaderMap;
use bytes::Bytes;
use thiserror::Error;

/// The header that says where the JSON ends.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Error, PartialEq)]
pub enum BinaryError {
    #[error("Inference-Header-Content-Length is {0:?}; expected a byte count")]
    BadHeaderLength(String),
    #[error("Inference-Header-Content-Length is {header} but the body has only {body} bytes")]
    HeaderPastBody { header: u64, body: usize },
    #[error("binary_data_size of {input} is {size} but only {left} bytes of binary data are left")]
    PastEnd { input: String, size: u64, left: usize },
    #[error("{0} bytes of binary data after the last input's binary_data_size; the sizes must add up to the data")]
    Leftover(usize),
    #[error("BYTES element {index} claims {length} bytes but only {left} are left in its tensor")]
    ElementPastEnd { index: usize, length: u32, left: usize },
    #[error("BYTES element {index} is cut inside its 4-byte length")]
    CutLength { index: usize },
}

/// The body split into its JSON header and its binary data (empty without
/// the header: then the whole body is JSON).
pub fn split_body(headers: &HeaderMap, body: Bytes) -> Result<(Bytes, BinaryData), BinaryError> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok((body, BinaryData { rest: Bytes::new() }));
    };
    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
    let header: u64 = text.trim().parse().map_err(|_| BinaryError::BadHeaderLength(text))?;
    let json_len = usize::try_from(header).ok().filter(|&n| n <= body.len());
    let json_len = json_len.ok_or(BinaryError::HeaderPastBody { header, body: body.len() })?;
    let mut json = body;
    let rest = json.split_off(json_len);
    Ok((json, BinaryData { rest }))
}

/// The binary part of a body, consumed input by input.
#[derive(Debug)]
pub struct BinaryData {
    rest: Bytes,
}

impl BinaryData {
    /// Data that came apart from a JSON header (gRPC's raw contents, joined).
    pub fn new(rest: Bytes) -> Self {
        Self { rest }
    }

    /// The next `size` bytes, for the input named `input`.
    pub fn take(&mut self, input: &str, size: u64) -> Result<Bytes, BinaryError> {
        let left = self.rest.len();
        let n = usize::try_from(size).ok().filter(|&n| n <= left);
        let n = n.ok_or_else(|| BinaryError::PastEnd { input: input.into(), size, left })?;
        Ok(self.rest.split_to(n))
    }

    /// Every byte must belong to some input.
    pub fn finish(self) -> Result<(), BinaryError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(BinaryError::Leftover(n)),
        }
    }
}

/// A BYTES tensor's elements (each a u32 LE length, then the bytes), as
/// slices of the same buffer: no copy of the images.
pub fn bytes_elements(mut data: Bytes) -> Result<Vec<Bytes>, BinaryError> {
    let mut elements = Vec::new();
    while !data.is_empty() {
        let index = elements.len();
        let length: [u8; 4] = data.get(..4).and_then(|b| b.try_into().ok()).ok_or(BinaryError::CutLength { index })?;
        let length = u32::from_le_bytes(length);
        let _ = data.split_to(4);
        let left = data.len();
        let n = usize::try_from(length).ok().filter(|&n| n <= left);
        let n = n.ok_or(BinaryError::ElementPastEnd { index, length, left })?;
        elements.push(data.split_to(n));
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_LENGTH, value.parse().unwrap());
        h
    }

    #[test]
    fn the_header_length_splits_json_from_data() {
        let (json, mut data) = split_body(&headers("2"), Bytes::from_static(b"{}abcde")).unwrap();
        assert_eq!(&json[..], b"{}");
        assert_eq!(&data.take("A", 2).unwrap()[..], b"ab");
        assert_eq!(&data.take("B", 3).unwrap()[..], b"cde");
        assert_eq!(data.finish(), Ok(()));
        // No header: all JSON, no data.
        let (json, data) = split_body(&HeaderMap::new(), Bytes::from_static(b"{}")).unwrap();
        assert_eq!((&json[..], data.rest.len()), (&b"{}"[..], 0));
    }

    #[test]
    fn lengths_that_do_not_add_up_are_refused() {
        let body = || Bytes::from_static(b"{}abc");
        assert_eq!(split_body(&headers("6"), body()).unwrap_err(), BinaryError::HeaderPastBody { header: 6, body: 5 });
        assert_eq!(split_body(&headers("-1"), body()).unwrap_err(), BinaryError::BadHeaderLength("-1".into()));
        assert!(split_body(&headers("99999999999999999999999"), body()).is_err());
        let (_, mut data) = split_body(&headers("2"), body()).unwrap();
        assert_eq!(data.take("A", 4).unwrap_err(), BinaryError::PastEnd { input: "A".into(), size: 4, left: 3 });
        assert_eq!(data.take("A", u64::MAX).unwrap_err(), BinaryError::PastEnd { input: "A".into(), size: u64::MAX, left: 3 });
        data.take("A", 1).unwrap();
        assert_eq!(data.finish(), Err(BinaryError::Leftover(2)));
    }

    #[test]
    fn bytes_elements_are_length_prefixed() {
        let data = Bytes::from_static(b"\x02\0\0\0hi\0\0\0\0\x03\0\0\0abc");
        let elements = bytes_elements(data).unwrap();
        assert_eq!(elements, vec![Bytes::from_static(b"hi"), Bytes::new(), Bytes::from_static(b"abc")]);
        assert_eq!(bytes_elements(Bytes::new()).unwrap(), Vec::<Bytes>::new());
        let past = bytes_elements(Bytes::from_static(b"\x02\0\0\0hi\xff\0\0\0abc")).unwrap_err();
        assert_eq!(past, BinaryError::ElementPastEnd { index: 1, length: 255, left: 3 });
        assert_eq!(bytes_elements(Bytes::from_static(b"\x01\0\0\0h\x01\0")).unwrap_err(), BinaryError::CutLength { index: 1 });
    }
}
