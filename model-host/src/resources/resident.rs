//! The host process's resident memory, from /proc.

/// Bytes of this process resident in RAM now (statm's second field, in
/// pages); 0 where /proc cannot be read.
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |p| p as u64);
    pages * page
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_running_process_is_resident() {
        let before = super::resident_bytes();
        assert!(before > 1 << 20, "a test process holds more than 1 MiB: {before}");
        // 64 MiB touched is resident too (black_box: an optimised build
        // would otherwise drop a vector that is never read).
        let held = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = super::resident_bytes();
        assert!(after >= before + (60 << 20), "{before} -> {after}");
        drop(held);
    }
}
