//! Which machine, as it runs now, a process is on.
//!
//! The one place this crate reads the OS: the server states its identity in the handshake
//! and a client compares it with its own, so both must compute it the same way.

/// The host name and the kernel's boot id (the machine id where there is no boot id):
/// two containers with one host name on different machines differ, and a machine differs
/// from itself after a reboot, when no shared segment can have survived.
pub fn host_id() -> String {
    let name = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let machine = ["/proc/sys/kernel/random/boot_id", "/etc/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{name}/{machine}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn stable_within_a_boot_and_names_the_host() {
        let id = super::host_id();
        assert_eq!(id, super::host_id());
        let (name, machine) = id.split_once('/').expect("name/machine");
        assert!(!name.is_empty());
        assert!(!machine.is_empty(), "no boot id or machine id read");
    }
}
