//! The frozen-module cache: a model as it is after the slow part of its
//! load (cast to model.toml's precision and `torch.jit.freeze`d), saved
//! once as a TorchScript archive, so that later starts read that instead
//! and redo only `optimize_for_inference`, whose fused ops cannot be saved.
//! On ViT-H/14 the cast and freeze cost about 1.75 s a start, and the fp16
//! archive is half the fp32 file's bytes.
//!
//! An entry is `<dir>/<model stem>-<key>.pt` with a `.json` beside it. The
//! key hashes what the frozen module depends on: the model file's path,
//! size and modification time, libtorch's version, the device type and the
//! precision. The `.json` also holds the SHA-256 of the model file's
//! content, checked on every hit in parallel with the cached module's load
//! (a file rewritten in place with the same size and time is caught
//! there): on a mismatch the entry is removed and the model loaded from
//! its file. Entries are written to a temporary name and renamed, so a
//! crash or two hosts writing at once never leave half an entry; storing
//! an entry removes the same model file's older entries.
//!
//! Off unless a directory is given: `--cache-dir`, or systemd's
//! `CacheDirectory=` (`$CACHE_DIRECTORY`), as the shipped units set.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::torch_shim::{Module, ShimError};

/// Bumped when what an entry holds changes meaning.
const FORMAT: u32 = 1;

/// The model file is hashed in parts of this size, side by side; the
/// digest is the hash of the parts' hashes (the same on any machine).
const PART: u64 = 256 << 20;

static CONFIGURED: OnceLock<Option<FrozenCache>> = OnceLock::new();

/// Sets the host's cache directory, once at start (None: no cache).
pub fn configure(dir: Option<PathBuf>) {
    let _ = CONFIGURED.set(dir.map(|dir| FrozenCache { dir }));
}

/// The host's cache, if one was configured.
pub fn configured() -> Option<&'static FrozenCache> {
    CONFIGURED.get().and_then(Option::as_ref)
}

pub struct FrozenCache {
    dir: PathBuf,
}

/// What a frozen module depends on, besides the model file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    pub format: u32,
    pub model: PathBuf,
    pub size: u64,
    pub modified_ns: u128,
    pub torch: String,
    /// "cpu" or "cuda": the constants move to the device index at load.
    pub device: String,
    /// The dtype the module was cast to, or "as saved".
    pub precision: String,
}

/// The `.json` beside an entry.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    key: Key,
    sha256: String,
    /// The module's parameters and buffers before freezing (a frozen
    /// module has them as constants, which are not counted).
    #[serde(default)]
    weight_bytes: u64,
}

/// A usable entry.
pub struct Hit {
    pub module: PathBuf,
    sha256: String,
    weight_bytes: u64,
}

impl Key {
    /// The key of `file` frozen on `device` at `precision`.
    pub fn of(file: &Path, device: tch::Device, precision: Option<tch::Kind>) -> std::io::Result<Key> {
        let model = file.canonicalize()?;
        let meta = std::fs::metadata(&model)?;
        let modified_ns = meta.modified()?.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Ok(Key {
            format: FORMAT,
            model,
            size: meta.len(),
            modified_ns,
            torch: crate::torch_shim::torch_version(),
            device: if device.is_cuda() { "cuda" } else { "cpu" }.to_string(),
            precision: precision.map_or_else(|| "as saved".to_string(), |k| format!("{k:?}")),
        })
    }

    /// The entry's file name, without extension.
    fn name(&self) -> String {
        let stem = self.model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        let hash = Sha256::digest(serde_json::to_vec(self).unwrap_or_default());
        format!("{stem}-{}", hex(&hash[..8]))
    }
}

impl FrozenCache {
    pub fn new(dir: PathBuf) -> Self {
        FrozenCache { dir }
    }

    /// The entry for `key`, if there is a whole one.
    pub fn lookup(&self, key: &Key) -> Option<Hit> {
        let name = key.name();
        let module = self.dir.join(format!("{name}.pt"));
        let sidecar: Sidecar = serde_json::from_slice(&std::fs::read(self.dir.join(format!("{name}.json"))).ok()?).ok()?;
        (sidecar.key == *key && module.is_file()).then_some(Hit { module, sha256: sidecar.sha256, weight_bytes: sidecar.weight_bytes })
    }

    /// Saves `module` (frozen, not yet optimized) as the entry for `key`,
    /// the model file's content hashing to `sha256`, its weights
    /// `weight_bytes`; removes the same model's other entries.
    pub fn store(&self, module: &Module, key: &Key, sha256: &str, weight_bytes: u64) -> Result<PathBuf, String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let name = key.name();
        let (pt, json) = (self.dir.join(format!("{name}.pt")), self.dir.join(format!("{name}.json")));
        let tmp = |path: &Path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            path.with_file_name(format!("{name}.tmp.{}", std::process::id()))
        };
        module.save(&tmp(&pt)).map_err(|e| format!("saving the frozen module: {}", e.0))?;
        let sidecar = serde_json::to_vec_pretty(&Sidecar { key: key.clone(), sha256: sha256.to_string(), weight_bytes }).map_err(|e| e.to_string())?;
        std::fs::write(tmp(&json), sidecar).map_err(|e| format!("writing {}: {e}", json.display()))?;
        std::fs::rename(tmp(&pt), &pt).map_err(|e| format!("renaming into {}: {e}", pt.display()))?;
        std::fs::rename(tmp(&json), &json).map_err(|e| format!("renaming into {}: {e}", json.display()))?;
        self.remove_others(key, &name);
        Ok(pt)
    }

    /// Removes an entry found wrong (its module does not load, or the
    /// model file's content changed).
    pub fn remove(&self, hit: &Hit) {
        let _ = std::fs::remove_file(hit.module.with_extension("json"));
        let _ = std::fs::remove_file(&hit.module);
    }

    /// Older entries of the same model file (another size, time, libtorch
    /// or precision).
    fn remove_others(&self, key: &Key, keep: &str) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return };
        for path in dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")) {
            if path.file_stem().is_some_and(|s| s == keep) {
                continue;
            }
            let same_model = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Sidecar>(&b).ok()).is_some_and(|s| s.key.model == key.model);
            if same_model {
                let _ = std::fs::remove_file(path.with_extension("pt"));
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

impl Hit {
    /// Whether the model file's content is still what the entry was made from.
    pub fn matches(&self, sha256: &str) -> bool {
        self.sha256 == sha256
    }
}

/// SHA-256 of `file`'s content, hashed in [`PART`]-sized parts on up to 8
/// threads (ViT-H's 2.5 GB in about 0.2 s on 16 cores), then the parts'
/// hashes hashed in order.
pub fn content_hash(file: &Path) -> std::io::Result<String> {
    hash_in_parts(file, PART)
}

fn hash_in_parts(file: &Path, part: u64) -> std::io::Result<String> {
    let size = std::fs::metadata(file)?.len();
    let parts: Vec<u64> = (0..size.div_ceil(part).max(1)).collect();
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get()).clamp(1, 8);
    let hashes: Vec<std::io::Result<[u8; 32]>> = std::thread::scope(|scope| {
        let chunks: Vec<_> = parts.chunks(parts.len().div_ceil(threads)).map(|ids| scope.spawn(move || ids.iter().map(|&i| part_hash(file, i, part, size)).collect::<Vec<_>>())).collect();
        chunks.into_iter().flat_map(|c| c.join().unwrap_or_else(|_| vec![Err(std::io::Error::other("a hashing thread panicked"))])).collect()
    });
    let mut all = Sha256::new();
    for h in hashes {
        all.update(h?);
    }
    Ok(hex(&all.finalize()))
}

fn part_hash(file: &Path, index: u64, part: u64, size: u64) -> std::io::Result<[u8; 32]> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(file)?;
    let start = (index * part).min(size);
    f.seek(SeekFrom::Start(start))?;
    let mut left = part.min(size - start);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank while being hashed"));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.finalize().into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FrozenCache {
    /// Loads `file` onto `device`, cast to `cast`, frozen and optimized for
    /// inference, through the cache: from the entry when there is a good
    /// one, else from the file, storing the frozen module for next time.
    /// Nothing about the cache fails a load: each problem is a log line
    /// and the slow path. With the module, its weights' bytes.
    pub fn load(&self, file: &Path, device: tch::Device, cast: Option<tch::Kind>, progress: &mut dyn FnMut(u64, u64)) -> Result<(Module, u64), ShimError> {
        let key = match Key::of(file, device, cast) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(error = %e, "frozen-module cache not used: cannot read the model file's metadata");
                return load_and_freeze(file, device, cast, progress, None);
            }
        };
        // The content hash runs beside the load either way: a hit checks
        // it, a miss stores it.
        let owned = file.to_path_buf();
        let hashing = std::thread::Builder::new().name("model-hash".into()).spawn(move || content_hash(&owned).map_err(|e| e.to_string()));
        let mut hashing = Hashing::Running(hashing.map_err(|e| e.to_string()));
        if let Some(hit) = self.lookup(&key) {
            let started = std::time::Instant::now();
            match Module::load_reporting(&hit.module, device, None, progress) {
                Ok(mut module) => {
                    if hashing.result().is_ok_and(|h| hit.matches(h)) {
                        optimize(&mut module);
                        tracing::info!(entry = %hit.module.display(), ms = ms_since(started), "frozen module loaded from the cache");
                        return Ok((module, hit.weight_bytes));
                    }
                    tracing::warn!(entry = %hit.module.display(), "the model file's content differs from the cached module's; loading the file");
                }
                Err(e) => tracing::warn!(entry = %hit.module.display(), error = %e.0, "cannot load the cached frozen module; loading the model file"),
            }
            self.remove(&hit);
        }
        let cache = match hashing.result() {
            Ok(sha256) => Some((self, &key, sha256.to_string())),
            Err(e) => {
                tracing::warn!(error = %e, "frozen-module cache not written: cannot hash the model file");
                None
            }
        };
        load_and_freeze(file, device, cast, progress, cache)
    }
}

/// The model file's content hash, joined once.
enum Hashing {
    Running(Result<std::thread::JoinHandle<Result<String, String>>, String>),
    Done(Result<String, String>),
}

impl Hashing {
    fn result(&mut self) -> Result<&str, &str> {
        if let Hashing::Running(handle) = self {
            let handle = std::mem::replace(handle, Err(String::new()));
            *self = Hashing::Done(handle.and_then(|h| h.join().unwrap_or_else(|_| Err("the hashing thread panicked".into()))));
        }
        match self {
            Hashing::Done(r) => r.as_deref().map_err(String::as_str),
            Hashing::Running(_) => Err("not hashed"),
        }
    }
}

/// The slow path: the file loaded and cast, frozen, stored in the cache
/// when one is given (before `optimize_for_inference`), then optimized.
/// A module that cannot be frozen runs as saved. With the module, its
/// weights' bytes, counted before freezing.
pub fn load_and_freeze(
    file: &Path,
    device: tch::Device,
    cast: Option<tch::Kind>,
    progress: &mut dyn FnMut(u64, u64),
    cache: Option<(&FrozenCache, &Key, String)>,
) -> Result<(Module, u64), ShimError> {
    let (mut module, bytes) = load_cast(file, device, cast, progress)?;
    let started = std::time::Instant::now();
    let comparisons = match module.freeze(false) {
        Ok(comparisons) => comparisons,
        Err(e) => {
            tracing::warn!(error = %e.0, "cannot freeze the module; it runs as saved");
            return Ok((module, bytes));
        }
    };
    tracing::info!(
        ms = ms_since(started),
        constants_compared = comparisons.compared,
        settled_by_fingerprint = comparisons.by_fingerprint,
        "module frozen"
    );
    if let Some((cache, key, sha256)) = cache {
        let started = std::time::Instant::now();
        match cache.store(&module, key, &sha256, bytes) {
            Ok(entry) => tracing::info!(entry = %entry.display(), ms = ms_since(started), "frozen module stored in the cache"),
            Err(e) => tracing::warn!(error = %e, "frozen-module cache not written"),
        }
    }
    optimize(&mut module);
    Ok((module, bytes))
}

/// The file loaded onto `device` and cast, not frozen, with a log line of
/// how it was read; with its weights' bytes.
pub fn load_cast(file: &Path, device: tch::Device, cast: Option<tch::Kind>, progress: &mut dyn FnMut(u64, u64)) -> Result<(Module, u64), ShimError> {
    let started = std::time::Instant::now();
    let module = Module::load_reporting(file, device, cast, progress)?;
    let bytes = weight_bytes(&module);
    let streamed = module.streamed();
    tracing::info!(
        ms = ms_since(started),
        cast = ?cast,
        streamed_records = streamed.records,
        streamed_bytes = streamed.bytes,
        read_plain_because = streamed.plain_because.as_deref().unwrap_or(""),
        "module read onto the device"
    );
    Ok((module, bytes))
}

/// A frozen, optimised copy of `module`, made beside it serving (the
/// freeze after READY); None, with a log line saying why, where it cannot
/// be: the module then goes on serving as loaded.
pub fn frozen_copy(module: &Module) -> Option<Module> {
    let started = std::time::Instant::now();
    match module.frozen_copy(true) {
        Ok((frozen, comparisons)) => {
            tracing::info!(
                ms = ms_since(started),
                constants_compared = comparisons.compared,
                settled_by_fingerprint = comparisons.by_fingerprint,
                "module frozen and optimized for inference after READY"
            );
            Some(frozen)
        }
        Err(e) => {
            tracing::warn!(error = %e.0, "cannot freeze the module after READY; it goes on serving as loaded");
            None
        }
    }
}

fn ms_since(started: std::time::Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

/// The module's parameters and buffers in bytes (0, with a log line, if
/// they cannot be counted).
pub fn weight_bytes(module: &Module) -> u64 {
    module.weight_bytes().unwrap_or_else(|e| {
        tracing::warn!(error = %e.0, "cannot count the model's weights; model bytes reported as 0");
        0
    })
}

fn optimize(module: &mut Module) {
    let started = std::time::Instant::now();
    match module.optimize() {
        Ok(()) => tracing::info!(ms = ms_since(started), "module frozen and optimized for inference"),
        Err(e) => tracing::warn!(error = %e.0, "cannot optimize the frozen module for inference; it runs frozen"),
    }
}

#[cfg(test)]
#[path = "frozen_cache_tests.rs"]
mod tests;
