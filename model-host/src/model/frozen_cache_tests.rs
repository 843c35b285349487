//! The frozen-module cache on the CPU, with the digits model: a hit answers
//! as the slow path does, and every way an entry can go stale or bad ends
//! in the slow path (and a fresh entry), never in a failed load.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::*;

fn digits_copy(dir: &Path) -> PathBuf {
    let from = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/digits/model.pt"));
    assert!(from.exists(), "models/digits is missing: run scripts/setup first");
    let to = dir.join("model.pt");
    std::fs::copy(from, &to).unwrap();
    to
}

fn answer(module: &Module) -> Tensor {
    let x = Tensor::ones([2, 1, 32, 32], (Kind::Float, Device::Cpu)) * 0.5;
    module.forward(&[&x]).unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    names.sort();
    names
}

fn load(cache: &FrozenCache, file: &Path) -> Module {
    cache.load(file, Device::Cpu, None, &mut |_, _| {}).unwrap().0
}

#[test]
fn a_hit_answers_as_the_slow_path_and_needs_no_freeze() {
    let (models, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = digits_copy(models.path());
    let cache = FrozenCache::new(dir.path().to_path_buf());
    let want = answer(&load_and_freeze(&file, Device::Cpu, None, &mut |_, _| {}, None).unwrap().0);

    let key = Key::of(&file, Device::Cpu, None).unwrap();
    assert!(cache.lookup(&key).is_none());
    let first = answer(&load(&cache, &file));
    let hit = cache.lookup(&key).expect("the first load stores an entry");
    assert_eq!(entries(dir.path()).len(), 2, "{:?}", entries(dir.path()));

    // The entry is a frozen module: loaded as it is, it has no `training`
    // attribute left and answers alone.
    let mut read_bytes = 0;
    let cached = Module::load_reporting(&hit.module, Device::Cpu, None, &mut |read, _| read_bytes = read).unwrap();
    assert!(read_bytes > 0);
    let stored = std::fs::metadata(&hit.module).unwrap().modified().unwrap();
    // The weights' count survives freezing through the entry.
    let (_, slow_bytes) = load_and_freeze(&file, Device::Cpu, None, &mut |_, _| {}, None).unwrap();
    let (_, hit_bytes) = cache.load(&file, Device::Cpu, None, &mut |_, _| {}).unwrap();
    assert!(slow_bytes > 0);
    assert_eq!(hit_bytes, slow_bytes);
    let second = answer(&load(&cache, &file));
    assert_eq!(std::fs::metadata(&hit.module).unwrap().modified().unwrap(), stored, "a hit does not write the entry again");
    for got in [first, second, answer(&cached)] {
        assert!((&got - &want).abs().max().double_value(&[]) < 1e-5);
    }
}

#[test]
fn the_key_follows_the_file_libtorch_and_precision() {
    let models = tempfile::tempdir().unwrap();
    let file = digits_copy(models.path());
    let base = Key::of(&file, Device::Cpu, None).unwrap();
    assert_eq!(base.torch, crate::torch_shim::torch_version());
    assert_ne!(base.name(), Key::of(&file, Device::Cpu, Some(Kind::BFloat16)).unwrap().name());
    assert_ne!(base.name(), Key { torch: "0.0.1".into(), ..base.clone() }.name());
    assert_ne!(base.name(), Key { device: "cuda".into(), ..base.clone() }.name());
    let later = std::fs::File::options().write(true).open(&file).unwrap();
    later.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    assert_ne!(base.name(), Key::of(&file, Device::Cpu, None).unwrap().name());
}

#[test]
fn a_new_model_file_replaces_the_old_entry() {
    let (models, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = digits_copy(models.path());
    let cache = FrozenCache::new(dir.path().to_path_buf());
    load(&cache, &file);
    let before = entries(dir.path());
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    load(&cache, &file);
    let after = entries(dir.path());
    assert_eq!(after.len(), 2, "one entry, not two: {after:?}");
    assert_ne!(before, after);
}

#[test]
fn content_changed_under_the_same_size_and_time_is_caught_by_the_hash() {
    let (models, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = digits_copy(models.path());
    let cache = FrozenCache::new(dir.path().to_path_buf());
    load(&cache, &file);
    let key = Key::of(&file, Device::Cpu, None).unwrap();
    let hit = cache.lookup(&key).unwrap();
    // Another model's frozen module put in the entry's place, the sidecar
    // left saying it is this file's: the hash check must not trust it.
    let sidecar = hit.module.with_extension("json");
    let mut text: serde_json::Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    text["sha256"] = "0".repeat(64).into();
    std::fs::write(&sidecar, serde_json::to_vec(&text).unwrap()).unwrap();
    assert!(!cache.lookup(&key).unwrap().matches(&content_hash(&file).unwrap()));
    load(&cache, &file);
    assert!(cache.lookup(&key).unwrap().matches(&content_hash(&file).unwrap()), "the entry is made again");
}

#[test]
fn a_corrupt_entry_falls_back_to_the_file_and_is_made_again() {
    let (models, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = digits_copy(models.path());
    let cache = FrozenCache::new(dir.path().to_path_buf());
    let want = answer(&load(&cache, &file));
    let hit = cache.lookup(&Key::of(&file, Device::Cpu, None).unwrap()).unwrap();
    let bytes = std::fs::read(&hit.module).unwrap();
    std::fs::write(&hit.module, &bytes[..bytes.len() / 2]).unwrap();
    let got = answer(&load(&cache, &file));
    assert!((&got - &want).abs().max().double_value(&[]) < 1e-5);
    assert_eq!(std::fs::read(&hit.module).unwrap().len(), bytes.len(), "the entry is whole again");
}

#[test]
fn an_unwritable_cache_still_loads() {
    let models = tempfile::tempdir().unwrap();
    let file = digits_copy(models.path());
    // A directory that cannot be created: its parent is a file.
    let cache = FrozenCache::new(file.join("cache"));
    assert_eq!(answer(&load(&cache, &file)).size(), [2, 10]);
}

#[test]
fn the_hash_is_the_hash_of_the_parts_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bytes");
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let mut want = Sha256::new();
    for part in bytes.chunks(4096) {
        want.update(Sha256::digest(part));
    }
    assert_eq!(hash_in_parts(&file, 4096).unwrap(), hex(&want.finalize()));
    assert_eq!(content_hash(&file).unwrap(), hex(&Sha256::digest(Sha256::digest(&bytes))));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(content_hash(&empty).unwrap(), hex(&Sha256::digest(Sha256::digest(b""))));
}
