//! Network namespaces as stand-in machines, for tests that need several
//! nodes' worth of addresses on one box. Each namespace is joined to the
//! root namespace by a veth pair on a /30 of its own (10.231.x.0/30: .1 on
//! the root side, .2 inside); nothing else of the root namespace changes.
//! Dropping a [`NetNs`] deletes it, and with it both ends of its veth pair.
//! Needs root (`ip netns` mounts, veth creation): [`NetNs::create`] says
//! why when it cannot, so that a test can skip loudly instead of failing.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Namespace names start with this, then the creating test's pid.
const PREFIX: &str = "splitserve-";

/// One namespace, removed on drop (also when a test panics).
pub struct NetNs {
    pub name: String,
    /// This namespace's own address, on its end of the veth pair.
    pub addr: Ipv4Addr,
    /// The root namespace's end of the veth pair (deleted with the namespace).
    root_link: String,
}

/// Runs `ip` with `args`; its stderr as the error.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl NetNs {
    /// Namespace `splitserve-<pid>-<index>` with 10.231.<subnet>.2/30 inside.
    pub fn create(index: u8, subnet: u8) -> Result<NetNs, String> {
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}-{index}");
        ip(&["netns", "add", &name])?;
        // From here on, Drop removes whatever was made.
        let ns = NetNs {
            name,
            addr: Ipv4Addr::new(10, 231, subnet, 2),
            // Interface names are at most 15 bytes: "ssr" + 7-digit pid + index.
            root_link: format!("ssr{pid}{index}"),
        };
        let peer = format!("ssp{pid}{index}");
        let root_addr = format!("10.231.{subnet}.1/30");
        let inner_addr = format!("{}/30", ns.addr);
        ip(&["link", "add", &ns.root_link, "type", "veth", "peer", "name", &peer, "netns", &ns.name])?;
        ip(&["addr", "add", &root_addr, "dev", &ns.root_link])?;
        ip(&["link", "set", &ns.root_link, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &inner_addr, "dev", &peer])?;
        ip(&["-n", &ns.name, "link", "set", &peer, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The program and arguments that run `program` inside this namespace
    /// (`ip netns exec` execs it, so the pid is the program's own).
    pub fn exec_args(&self, program: &std::path::Path, args: &[String]) -> Vec<String> {
        let mut all = vec!["netns".to_string(), "exec".to_string(), self.name.clone(), program.display().to_string()];
        all.extend(args.iter().cloned());
        all
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("removing namespace {}: {e}", self.name);
        }
        // Gone with the namespace once its last process exits; removed here
        // in case one still lingers.
        let _ = ip(&["link", "del", &self.root_link]);
    }
}

/// Removes namespaces that a test killed before its drops ran left behind
/// (their creator pid is gone); the names of those that remain.
pub fn sweep_stale() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    let mut left = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)) {
            let _ = ip(&["netns", "del", name]);
        } else {
            left.push(name.to_string());
        }
    }
    left
}
