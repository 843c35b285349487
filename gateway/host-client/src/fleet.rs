//! The hosts this gateway knows, and the one handle request handlers use.
//!
//! Each host socket (given with `--host-socket`, or found in `--host-dir`)
//! is a *member*: a background task ([`super::member`]) keeps its link up
//! and writes its state here. Handlers read the table through [`Fleet`]:
//! [`Fleet::route`] picks a ready host for a model and version
//! ([`super::routing`]); the listings feed health, model lists, the
//! repository index and metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protocol::ModelInfo;
use tokio::sync::watch;

use super::route::Route;
use super::routing::{Candidate, choose, compare_versions};
use super::{HostCallError, Link};

/// What handlers hold: a cheap clone of the shared table.
#[derive(Clone)]
pub struct Fleet {
    shared: Arc<Shared>,
}

struct Shared {
    members: RwLock<BTreeMap<u64, Member>>,
    next_id: AtomicU64,
    /// Tie-breaker among equally loaded replicas.
    turn: AtomicUsize,
    /// Held while a request is routed: choosing the least loaded replica
    /// and counting the request there are one step, so that requests
    /// arriving together see each other.
    routing: std::sync::Mutex<()>,
    /// Bumped on every change of the table, for [`Fleet::wait_settled`].
    changed: watch::Sender<u64>,
}

/// One host socket and what is known of it.
#[derive(Clone)]
pub struct Member {
    pub socket: PathBuf,
    /// The live link, if connected.
    pub link: Option<Arc<Link>>,
    /// The model its host served when last connected: a model whose only
    /// host is restarting is unavailable (503), not unknown (404).
    pub last_model: Option<(String, String)>,
    /// Why there is no link, as a phase word ("connecting", "disconnected").
    pub down_reason: String,
    /// The last failed attempt's error, for `GET /v1/hosts`.
    pub last_error: Option<String>,
    /// Gone from the host directory: no new requests, in-flight ones finish.
    pub retired: bool,
    /// Linked once, or (for a directory entry) tried once: the start-up
    /// wait is over for it.
    pub settled: bool,
}

impl Member {
    /// The link if it is up (whatever the host's phase).
    pub fn live_link(&self) -> Option<&Arc<Link>> {
        self.link.as_ref().filter(|l| !l.is_closed())
    }

    /// Model, version, readiness and load, for routing; None for a member
    /// that never reached a host, or that left the directory and whose
    /// link is gone.
    fn candidate(&self) -> Option<Candidate<'_>> {
        match (self.live_link(), self.retired) {
            (Some(link), retired) => {
                let model = link.model();
                let phase = link.phase();
                Some(Candidate {
                    model: &model.name,
                    version: &model.version,
                    // A retired member only finishes what it has.
                    ready: phase.is_ready() && !retired,
                    outstanding: link.outstanding(),
                    phase: if retired { "draining" } else { phase.name() },
                })
            }
            (None, true) => None,
            (None, false) => self.last_model.as_ref().map(|(model, version)| Candidate {
                model,
                version,
                ready: false,
                outstanding: 0,
                phase: &self.down_reason,
            }),
        }
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                members: RwLock::new(BTreeMap::new()),
                next_id: AtomicU64::new(1),
                turn: AtomicUsize::new(0),
                routing: std::sync::Mutex::new(()),
                changed: watch::channel(0).0,
            }),
        }
    }
}

impl Fleet {
    /// A ready host for `model` (at `version`, or the newest ready one),
    /// the least loaded among replicas.
    pub fn route(&self, model: &str, version: Option<&str>) -> Result<Route, HostCallError> {
        let _one_at_a_time = self.shared.routing.lock().expect("routing lock poisoned");
        self.choose(model, version).map(|link| Route::new(link, self.clone()))
    }

    /// Another ready host serving what `link`'s host serves (same model,
    /// version and signature, and the same JPEG decode offer: a request may
    /// already hold a JPEG for the host to decode), the least loaded; None
    /// if there is none.
    pub fn replica_of(&self, link: &Arc<Link>) -> Option<Arc<Link>> {
        let members = self.read();
        let model = link.model();
        members
            .values()
            .filter(|m| !m.retired)
            .filter_map(Member::live_link)
            .filter(|other| !Arc::ptr_eq(other, link) && other.phase().is_ready())
            .filter(|other| {
                let m = other.model();
                m.name == model.name && m.version == model.version && m.kind.same_signature(&model.kind) && m.host_decode == model.host_decode
            })
            .min_by_key(|other| other.outstanding())
            .cloned()
    }

    fn choose(&self, model: &str, version: Option<&str>) -> Result<Arc<Link>, HostCallError> {
        let members = self.read();
        let (links, candidates): (Vec<Option<&Arc<Link>>>, Vec<Candidate<'_>>) =
            members.values().filter_map(|m| Some((m.live_link(), m.candidate()?))).unzip();
        if candidates.is_empty() {
            return Err(self.nobody(&members));
        }
        let i = choose(&candidates, model, version, self.shared.turn.fetch_add(1, Relaxed))?;
        Ok(links[i].expect("a ready candidate has a live link").clone())
    }

    /// A connected host of `model` in any phase, for metadata: the routed
    /// one when there is one, else the newest version that is connected.
    pub fn find(&self, model: &str, version: Option<&str>) -> Result<Arc<Link>, HostCallError> {
        let unavailable = match self.choose(model, version) {
            Err(e @ HostCallError::Unavailable { .. }) => e,
            routed => return routed,
        };
        let members = self.read();
        members
            .values()
            .filter_map(Member::live_link)
            .filter(|l| l.model().name == model && version.is_none_or(|v| l.model().version == v))
            .max_by(|a, b| compare_versions(&a.model().version, &b.model().version))
            .cloned()
            .ok_or(unavailable)
    }

    /// Every member, as of now.
    pub fn members(&self) -> Vec<Member> {
        self.read().values().cloned().collect()
    }

    /// Every model with a connected host: (name, version) -> its links.
    pub fn models(&self) -> BTreeMap<(String, String), Vec<Arc<Link>>> {
        let mut models: BTreeMap<(String, String), Vec<Arc<Link>>> = BTreeMap::new();
        for link in self.read().values().filter(|m| !m.retired).filter_map(Member::live_link) {
            models.entry((link.model().name.clone(), link.model().version.clone())).or_default().push(link.clone());
        }
        models
    }

    /// Ok while every model this gateway knows has a ready host; else the
    /// models that have none (or why no model is known).
    pub fn readiness(&self) -> Result<Vec<String>, String> {
        let members = self.read();
        let mut known: BTreeMap<&str, bool> = BTreeMap::new();
        for c in members.values().filter_map(Member::candidate) {
            *known.entry(c.model).or_default() |= c.ready;
        }
        if known.is_empty() {
            return match self.nobody(&members) {
                HostCallError::Unavailable { phase } => Err(phase),
                other => Err(other.to_string()),
            };
        }
        // Each unready model with what its hosts are doing ("loading
        // weights 43% (1.1 of 2.5 GB)"), so a probe's body says how long.
        let unready: Vec<String> = known
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(model, _)| {
                let doing: Vec<String> = members
                    .values()
                    .filter_map(|m| m.live_link().filter(|l| l.model().name == *model && !m.retired))
                    .map(|l| l.phase().describe())
                    .collect();
                if doing.is_empty() { model.to_string() } else { format!("{model} ({})", doing.join("; ")) }
            })
            .collect();
        if unready.is_empty() {
            Ok(known.into_keys().map(String::from).collect())
        } else {
            Err(format!("no ready host for {}", unready.join(", ")))
        }
    }

    /// Waits until every member has settled (see [`Member::settled`]) or
    /// `limit` passes; true if all have.
    pub async fn wait_settled(&self, limit: Duration) -> bool {
        let mut changed = self.shared.changed.subscribe();
        let all_settled = |_: &u64| self.read().values().all(|m| m.settled);
        tokio::time::timeout(limit, changed.wait_for(all_settled)).await.is_ok_and(|r| r.is_ok())
    }

    /// Adds a member for `socket`; its task reports through the id.
    pub(super) fn add(&self, socket: PathBuf) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Relaxed);
        let member =
            Member { socket, link: None, last_model: None, down_reason: "connecting".into(), last_error: None, retired: false, settled: false };
        self.update(|members| {
            members.insert(id, member);
        });
        id
    }

    /// Puts `link` in service for member `id`, unless a connected host
    /// already serves the same model and version with another signature.
    pub(super) fn admit(&self, id: u64, link: &Arc<Link>) -> Result<(), String> {
        let model = link.model();
        let mut result = Ok(());
        self.update(|members| {
            if let Some(other) = members.values().filter(|m| !m.retired).find_map(|m| conflict(m, model)) {
                result = Err(other);
                return;
            }
            if let Some(member) = members.get_mut(&id) {
                member.link = Some(link.clone());
                member.last_error = None;
                member.last_model = Some((model.name.clone(), model.version.clone()));
                member.settled = true;
            }
        });
        result
    }

    /// Records that member `id` has no link, and the error if an attempt
    /// failed; `settle`: the start-up wait need not wait for it any more.
    pub(super) fn set_down(&self, id: u64, error: Option<String>, settle: bool) {
        self.update(|members| {
            if let Some(member) = members.get_mut(&id) {
                member.link = None;
                member.down_reason = "disconnected".into();
                member.last_error = error;
                member.settled |= settle;
            }
        });
    }

    pub(super) fn retire(&self, id: u64) {
        self.update(|members| {
            if let Some(member) = members.get_mut(&id) {
                member.retired = true;
            }
        });
    }

    pub(super) fn remove(&self, id: u64) {
        self.update(|members| {
            members.remove(&id);
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Member>> {
        self.shared.members.read().expect("fleet lock poisoned")
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<u64, Member>)) {
        change(&mut self.shared.members.write().expect("fleet lock poisoned"));
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Why no host can serve anything: none found, or none reached yet.
    fn nobody(&self, members: &BTreeMap<u64, Member>) -> HostCallError {
        let mut reasons: Vec<&str> = members.values().map(|m| m.down_reason.as_str()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        let phase = if reasons.is_empty() { "no model host found".to_string() } else { reasons.join(", ") };
        HostCallError::Unavailable { phase }
    }
}

/// A member whose host serves `model`'s name and version with another
/// signature than `model`: the text of the refusal, naming both.
fn conflict(member: &Member, model: &ModelInfo) -> Option<String> {
    let theirs = member.live_link()?.model();
    (theirs.name == model.name && theirs.version == model.version && !theirs.kind.same_signature(&model.kind)).then(|| {
        format!(
            "serves model {} version {} with another signature than the host on {}; refused (give it another version)",
            model.name,
            model.version,
            member.socket.display()
        )
    })
}
