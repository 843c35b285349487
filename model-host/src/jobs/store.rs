//! Jobs on disk, under the host's state directory, so that a restarted
//! host still answers for the jobs it had: `<dir>/host-tag` (the tag its
//! job ids start with), and per job `<id>.json` (its record, rewritten at
//! each change of state) and `<id>.out` (a succeeded job's pixels).
//!
//! Every file is written to a temporary name and renamed, so a host killed
//! mid-write leaves the old version or the new one, never half of one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use protocol::jobs::{JobOutput, JobView};
use protocol::ImageShape;
use serde::{Deserialize, Serialize};

/// What is kept of a job besides its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub view: JobView,
    pub params: Vec<i64>,
    pub idempotency_key: Option<String>,
    /// The output's shape, once it is written.
    pub output: Option<ImageShape>,
}

/// A directory of job records, held by one host at a time.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// `<dir>/lock`, exclusively locked while this store lives: two hosts
    /// on one directory would fail each other's jobs at every restart.
    _lock: fs::File,
}

impl Store {
    /// Opens (creating) `dir`, private to the host's user (it holds what
    /// clients asked for and got), and locks it; a directory another
    /// process holds is an error saying so.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => std::io::Error::other("another model-host holds this job store; give each host its own socket or --state-dir"),
            fs::TryLockError::Error(e) => e,
        })?;
        Ok(Self { dir: dir.to_path_buf(), _lock: lock })
    }

    /// The host's tag: read from the directory, or made (from the clock
    /// and pid, which differ between any two hosts that start on one
    /// machine) and kept there on first use.
    pub fn host_tag(&self) -> std::io::Result<String> {
        let path = self.dir.join("host-tag");
        if let Ok(tag) = fs::read_to_string(&path) {
            let tag = tag.trim();
            if protocol::jobs::job_host_tag(&format!("{tag}-0")).is_some() {
                return Ok(tag.to_string());
            }
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let tag = format!("{:08x}", (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32);
        self.write_atomically(&path, tag.as_bytes())?;
        Ok(tag)
    }

    pub fn save(&self, record: &Record) -> std::io::Result<()> {
        let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        self.write_atomically(&self.record_path(&record.view.id), &json)
    }

    pub fn save_output(&self, id: &str, output: &JobOutput) -> std::io::Result<()> {
        self.write_atomically(&self.output_path(id), &output.pixels)
    }

    pub fn load_output(&self, id: &str, shape: ImageShape) -> std::io::Result<JobOutput> {
        let pixels = fs::read(self.output_path(id))?;
        if pixels.len() as u64 != shape.len() {
            return Err(std::io::Error::other(format!("{id}.out holds {} bytes, not the {} of its shape", pixels.len(), shape.len())));
        }
        Ok(JobOutput { shape, pixels })
    }

    /// Removes a job's files (missing ones are not an error).
    pub fn remove(&self, id: &str) {
        for path in [self.record_path(id), self.output_path(id)] {
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "removing an expired job's file");
            }
        }
    }

    /// Every readable record; unreadable ones are logged and removed (a
    /// record is only ever replaced whole, so one is unreadable only if
    /// someone else wrote it).
    pub fn load_all(&self) -> std::io::Result<Vec<Record>> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string())) {
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "unreadable job record; removed");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(records)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn output_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.out"))
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::JobState;

    fn record(id: &str) -> Record {
        let view = JobView {
            id: id.into(),
            model: "m".into(),
            state: JobState::Queued,
            step: 0,
            steps: 10,
            created_ms: 1,
            started_ms: None,
            finished_ms: None,
            error: None,
        };
        Record { view, params: vec![3, 7], idempotency_key: Some("k".into()), output: None }
    }

    #[test]
    fn records_outputs_and_the_tag_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tag = store.host_tag().unwrap();
        store.save(&record("ab-1")).unwrap();
        let shape = ImageShape { width: 2, height: 1, channels: 1 };
        store.save_output("ab-1", &JobOutput { shape, pixels: vec![9, 8] }).unwrap();
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();

        let held = Store::open(dir.path()).unwrap_err();
        assert!(held.to_string().contains("another model-host holds this job store"), "{held}");
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.host_tag().unwrap(), tag);
        assert_eq!(again.load_all().unwrap(), vec![record("ab-1")]);
        assert!(!dir.path().join("junk.json").exists());
        assert_eq!(again.load_output("ab-1", shape).unwrap().pixels, vec![9, 8]);
        assert!(again.load_output("ab-1", ImageShape { width: 3, height: 1, channels: 1 }).is_err());
        again.remove("ab-1");
        assert!(again.load_all().unwrap().is_empty());
    }
}
