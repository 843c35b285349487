//! Which host gets a request: plain functions over what the fleet knows,
//! unit-tested apart from any connection.
//!
//! Triton's default version policy: a request that names no version goes
//! to the newest version that has a ready host; one that names a version
//! goes to that version only. Among the ready hosts of the chosen version
//! (replicas: one per GPU), the one with the fewest of this gateway's
//! requests outstanding wins; ties go round-robin, so that light,
//! one-at-a-time traffic is spread too.

use std::cmp::Ordering;

use super::HostCallError;

/// One host as routing sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    pub model: &'a str,
    pub version: &'a str,
    /// Connected and in the Ready phase (not loading, warming, draining).
    pub ready: bool,
    pub outstanding: u64,
    /// The host's phase, for the 503 body when none is ready.
    pub phase: &'a str,
}

/// Orders versions the way people number them: as integers when both are
/// ("10" after "9"), else as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => a.cmp(b),
    }
}

/// The index (into `hosts`) of the host to send a request for `model`
/// (`version`, if named) to. `turn` breaks ties among equally loaded
/// replicas (a counter the caller increments).
pub fn choose(hosts: &[Candidate<'_>], model: &str, version: Option<&str>, turn: usize) -> Result<usize, HostCallError> {
    let of_model: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].model == model).collect();
    if of_model.is_empty() {
        return Err(HostCallError::UnknownModel(model.to_string()));
    }
    let version = match version {
        Some(v) => {
            if !of_model.iter().any(|&i| hosts[i].version == v) {
                let mut served: Vec<&str> = of_model.iter().map(|&i| hosts[i].version).collect();
                served.sort_by(|a, b| compare_versions(a, b));
                served.dedup();
                return Err(HostCallError::UnknownVersion { model: model.to_string(), version: v.to_string(), served: served.join(", ") });
            }
            v
        }
        None => match of_model.iter().filter(|&&i| hosts[i].ready).map(|&i| hosts[i].version).max_by(|a, b| compare_versions(a, b)) {
            Some(newest) => newest,
            None => return Err(unavailable(hosts, &of_model)),
        },
    };
    let replicas: Vec<usize> = of_model.into_iter().filter(|&i| hosts[i].version == version).collect();
    let ready: Vec<usize> = replicas.iter().copied().filter(|&i| hosts[i].ready).collect();
    let Some(least) = ready.iter().map(|&i| hosts[i].outstanding).min() else {
        return Err(unavailable(hosts, &replicas));
    };
    let tied: Vec<usize> = ready.into_iter().filter(|&i| hosts[i].outstanding == least).collect();
    Ok(tied[turn % tied.len()])
}

/// 503 naming the phases of the hosts that could have served.
fn unavailable(hosts: &[Candidate<'_>], of: &[usize]) -> HostCallError {
    let mut phases: Vec<&str> = of.iter().map(|&i| hosts[i].phase).collect();
    phases.sort_unstable();
    phases.dedup();
    HostCallError::Unavailable { phase: phases.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host<'a>(model: &'a str, version: &'a str, ready: bool, outstanding: u64) -> Candidate<'a> {
        Candidate { model, version, ready, outstanding, phase: if ready { "ready" } else { "warming" } }
    }

    #[test]
    fn no_version_means_the_newest_ready_one() {
        let hosts = [host("a", "1", true, 0), host("a", "2", false, 0), host("a", "10", true, 5), host("b", "3", true, 0)];
        assert_eq!(choose(&hosts, "a", None, 0), Ok(2), "10 is newer than 2 and 1; 2 is not ready");
        assert_eq!(choose(&hosts, "a", Some("1"), 0), Ok(0));
        assert_eq!(choose(&hosts, "b", None, 7), Ok(3));
    }

    #[test]
    fn a_named_version_that_is_not_ready_is_unavailable_not_another_version() {
        let hosts = [host("a", "1", true, 0), host("a", "2", false, 0)];
        assert_eq!(choose(&hosts, "a", Some("2"), 0), Err(HostCallError::Unavailable { phase: "warming".into() }));
        let down = [host("a", "1", false, 0)];
        assert_eq!(choose(&down, "a", None, 0), Err(HostCallError::Unavailable { phase: "warming".into() }));
    }

    #[test]
    fn unknown_models_and_versions_name_what_is_served() {
        let hosts = [host("a", "2", true, 0), host("a", "1", true, 0), host("a", "1", true, 0)];
        assert_eq!(choose(&hosts, "zz", None, 0), Err(HostCallError::UnknownModel("zz".into())));
        assert_eq!(
            choose(&hosts, "a", Some("9"), 0),
            Err(HostCallError::UnknownVersion { model: "a".into(), version: "9".into(), served: "1, 2".into() })
        );
    }

    #[test]
    fn replicas_by_fewest_outstanding_then_round_robin() {
        let hosts = [host("a", "1", true, 3), host("a", "1", true, 1), host("a", "1", true, 1), host("a", "1", false, 0)];
        assert_eq!(choose(&hosts, "a", None, 0), Ok(1));
        assert_eq!(choose(&hosts, "a", None, 1), Ok(2));
        assert_eq!(choose(&hosts, "a", None, 2), Ok(1));
    }

    #[test]
    fn versions_compare_as_numbers_when_both_are() {
        assert_eq!(compare_versions("10", "9"), Ordering::Greater);
        assert_eq!(compare_versions("b", "a"), Ordering::Greater);
        assert_eq!(compare_versions("2", "2"), Ordering::Equal);
    }
}
