//! model.toml's `decode` and `[host_decode]`: where the JPEGs of a model
//! that takes images (a classifier or a vision model) are decoded.
//!
//! ```toml
//! decode = "auto"              # "gateway" (default), "host" or "auto"
//! [host_decode]                # optional; the defaults below
//! max_bytes = 8388608          # largest JPEG file a slot takes (larger ones: the gateway decodes)
//! max_pixels = 40000000        # largest JPEG the host decodes (width x height, from its header)
//! auto_min_pixels = 1000000    # "auto": JPEGs from this size go to the host
//! threads = 4                  # nvJPEG decoders a batch is split over
//! ```
//!
//! `host` and `auto` need the host on a GPU with nvJPEG; elsewhere the host
//! says so in its log and the gateways decode as with `gateway`. `auto` is
//! the one to use for photos: measured on an H200 (docs/benchmarks.md,
//! "Real photos"), 1920x1080 JPEGs went 1.46x faster decoded on the host,
//! and 224x224 ones 1.43x faster decoded by four gateways.

use serde::Deserialize;

use protocol::shm::layout::MAX_SLOT_SIZE;

use super::Invalid;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodePlace {
    #[default]
    Gateway,
    Host,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDecodeConfig {
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    #[serde(default = "default_auto_min_pixels")]
    pub auto_min_pixels: u64,
    #[serde(default = "default_threads")]
    pub threads: usize,
}

/// Measured on an H200 with jpeg_bench (docs/benchmarks.md, "Real
/// photos"): 1920x1080 JPEGs in batches of 64 decoded and resized at 1,726,
/// 2,162, 2,370 and 2,138 img/s with 1, 2, 4 and 8 decoders.
fn default_threads() -> usize {
    4
}

/// A 12 MP phone photo is 3-6 MB at the usual qualities.
fn default_max_bytes() -> u64 {
    8 << 20
}

/// The gateway's own default `--max-pixels`.
fn default_max_pixels() -> u64 {
    40_000_000
}

/// About 1280x800: from here on a gateway core spends more than ~5 ms on a
/// JPEG even at a reduced DCT scale (decode_bench), while the GPU's engines
/// take it in a fraction of that.
fn default_auto_min_pixels() -> u64 {
    1_000_000
}

impl Default for HostDecodeConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            max_pixels: default_max_pixels(),
            auto_min_pixels: default_auto_min_pixels(),
            threads: default_threads(),
        }
    }
}

/// Where JPEGs are decoded, checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeConfig {
    pub place: DecodePlace,
    pub host: HostDecodeConfig,
}

impl DecodeConfig {
    /// What the host offers gateways once nvJPEG is open; None for `gateway`.
    pub fn offer(&self) -> Option<protocol::HostDecode> {
        let policy = match self.place {
            DecodePlace::Gateway => return None,
            DecodePlace::Host => protocol::DecodePolicy::Always,
            DecodePlace::Auto => protocol::DecodePolicy::Auto { min_pixels: self.host.auto_min_pixels },
        };
        Some(protocol::HostDecode { policy, max_bytes: self.host.max_bytes, max_pixels: self.host.max_pixels })
    }
}

/// Checks `decode` and `[host_decode]`; `images` says whether the model
/// takes images (a classifier or a vision model: the kinds the host
/// decodes for).
pub(super) fn validate(place: DecodePlace, host: Option<HostDecodeConfig>, images: bool) -> Result<DecodeConfig, Invalid> {
    if place != DecodePlace::Gateway && !images {
        return Err(("decode", format!("{place:?} decoding is for models that take images ([input]); a tensor model's inputs are not decoded").to_lowercase()));
    }
    let host = host.unwrap_or_default();
    if !(1024..=MAX_SLOT_SIZE).contains(&host.max_bytes) {
        return Err(("host_decode.max_bytes", format!("{} is outside 1024..={MAX_SLOT_SIZE}", host.max_bytes)));
    }
    if !(1..=1 << 30).contains(&host.max_pixels) {
        return Err(("host_decode.max_pixels", format!("{} is outside 1..={}", host.max_pixels, 1u64 << 30)));
    }
    if !(1..=16).contains(&host.threads) {
        return Err(("host_decode.threads", format!("{} is outside 1..=16", host.threads)));
    }
    Ok(DecodeConfig { place, host })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_follows_the_place() {
        let host = HostDecodeConfig::default();
        assert_eq!(DecodeConfig { place: DecodePlace::Gateway, host }.offer(), None);
        let always = DecodeConfig { place: DecodePlace::Host, host }.offer().unwrap();
        assert_eq!(always.policy, protocol::DecodePolicy::Always);
        assert_eq!(always.max_bytes, 8 << 20);
        let auto = DecodeConfig { place: DecodePlace::Auto, host }.offer().unwrap();
        assert_eq!(auto.policy, protocol::DecodePolicy::Auto { min_pixels: 1_000_000 });
    }

    #[test]
    fn limits_and_kinds_are_checked() {
        assert!(validate(DecodePlace::Host, None, true).is_ok());
        assert_eq!(validate(DecodePlace::Host, None, false).unwrap_err().0, "decode");
        assert!(validate(DecodePlace::Gateway, None, false).is_ok());
        let tiny = HostDecodeConfig { max_bytes: 10, ..HostDecodeConfig::default() };
        assert_eq!(validate(DecodePlace::Auto, Some(tiny), true).unwrap_err().0, "host_decode.max_bytes");
        let none = HostDecodeConfig { max_pixels: 0, ..HostDecodeConfig::default() };
        assert_eq!(validate(DecodePlace::Auto, Some(none), true).unwrap_err().0, "host_decode.max_pixels");
    }
}
