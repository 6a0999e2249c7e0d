//! The controllers a command's cgroup may get: memory (its limit, enforced by the
//! kernel) and cpu (its weight), where the parent cgroup offers them.
//!
//! A cgroup gets a controller only if its parent lists it in `cgroup.controllers`
//! and has it enabled in `cgroup.subtree_control`; genbuild enables it there when it
//! is not yet (once per parent). That fails where the parent holds processes of its
//! own (cgroup v2's "no internal processes" rule: a systemd service whose processes
//! sit in its own cgroup), and is impossible where the controller is bound to a cgroup
//! v1 hierarchy (hybrid hosts): the memory limit is then the watchdog's (see
//! [`crate::process::usage`]), and no weight is set. Which one applies is logged at
//! debug level.

use std::fs;
use std::path::Path;

use super::Cgroup;
use crate::process::usage::cpu_weight;

/// What a command asks of its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(in crate::process) struct Resources {
    /// Bytes of memory the command's processes may use together.
    pub(in crate::process) memory_limit: Option<u64>,
    /// The nice value its processes run at.
    pub(in crate::process) nice: Option<i32>,
}

/// What the kernel takes on for a command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(in crate::process) struct Enforced {
    /// The memory limit is `memory.max` (no swap, the whole cgroup killed on OOM).
    pub(in crate::process) memory: bool,
}

/// Whether `controller` is among those a cgroup file (`cgroup.controllers`,
/// `cgroup.subtree_control`) lists.
pub(super) fn lists(file: &str, controller: &str) -> bool {
    file.split_whitespace().any(|c| c == controller)
}

/// Enables the memory and cpu controllers for the children of `parent` where it offers
/// them and they are not enabled yet.
pub(super) fn enable_controllers(parent: &Path) {
    let offered = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    let enabled = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    for controller in ["memory", "cpu"] {
        if !lists(&offered, controller) {
            log::debug!(
                "cgroup {} offers no {controller} controller: {}",
                parent.display(),
                match controller {
                    "memory" => "memory limits are the watchdog's",
                    _ => "no cpu.weight for commands",
                }
            );
            continue;
        }
        if lists(&enabled, controller) {
            continue;
        }
        match fs::write(parent.join("cgroup.subtree_control"), format!("+{controller}")) {
            Ok(()) => log::debug!("enabled the {controller} controller below {}", parent.display()),
            Err(e) => log::debug!(
                "cannot enable the {controller} controller below {} ({e}; a cgroup holding processes of \
                 its own cannot): the watchdog and no weight instead",
                parent.display()
            ),
        }
    }
}

impl Cgroup {
    /// Sets what `resources` ask of this cgroup where its controllers allow, and says
    /// what the kernel enforces. Called before every command, also for a cgroup kept
    /// from the last one (whose settings are reset).
    pub(in crate::process) fn apply(&self, resources: &Resources) -> Enforced {
        let controllers = fs::read_to_string(self.dir.join("cgroup.controllers")).unwrap_or_default();
        let mut enforced = Enforced::default();
        if lists(&controllers, "memory") {
            let max = resources.memory_limit.map_or("max".to_string(), |limit| limit.to_string());
            let set = fs::write(self.dir.join("memory.max"), &max)
                .and_then(|()| fs::write(self.dir.join("memory.oom.group"), "1"));
            // No swap file where the kernel has no swap accounting: nothing to refuse.
            let _ = fs::write(self.dir.join("memory.swap.max"), "0");
            match set {
                Ok(()) => enforced.memory = resources.memory_limit.is_some(),
                Err(e) => log::debug!("cannot set memory.max of {} ({e}): the watchdog", self.dir.display()),
            }
        }
        if lists(&controllers, "cpu") {
            let weight = resources.nice.map_or(100, cpu_weight);
            if let Err(e) = fs::write(self.dir.join("cpu.weight"), weight.to_string()) {
                log::debug!("cannot set cpu.weight of {} ({e})", self.dir.display());
            }
        }
        if enforced.memory {
            self.memory_enforced.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        enforced
    }

    /// Whether the kernel killed a process of the cgroup for passing `memory.max`.
    pub(in crate::process) fn oom_killed(&self) -> bool {
        fs::read_to_string(self.dir.join("memory.events"))
            .is_ok_and(|events| super::super::usage::oom_kills(&events) > 0)
    }

    /// The most memory the cgroup used at once (`memory.peak`, Linux 5.19), where the
    /// memory controller counts it.
    pub(in crate::process) fn memory_peak(&self) -> Option<u64> {
        fs::read_to_string(self.dir.join("memory.peak")).ok()?.trim().parse().ok()
    }

    /// The CPU time the cgroup's processes used so far (`cpu.stat`, present in every
    /// cgroup v2, with or without the cpu controller).
    pub(in crate::process) fn cpu_used(&self) -> Option<std::time::Duration> {
        super::super::usage::cpu_usage(&fs::read_to_string(self.dir.join("cpu.stat")).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_is_found_in_a_controllers_list() {
        assert!(lists("cpuset cpu io memory hugetlb pids\n", "memory"));
        assert!(lists("cpu io", "cpu"));
        assert!(!lists("cpuset io", "cpu"), "cpuset is not cpu");
        assert!(!lists("hugetlb\n", "memory"));
        assert!(!lists("", "memory"));
    }

    /// Where the cgroup offers no memory controller (this machine: hybrid, memory on
    /// cgroup v1), nothing is enforced by the kernel and the watchdog takes over.
    #[test]
    fn without_the_memory_controller_the_kernel_enforces_nothing() {
        let Some(cgroup) = super::super::tests::fresh_cgroup() else { return };
        let offered = fs::read_to_string(cgroup.dir.join("cgroup.controllers")).unwrap();
        let enforced = cgroup.apply(&Resources { memory_limit: Some(1 << 30), nice: Some(10) });
        assert_eq!(enforced.memory, lists(&offered, "memory"), "controllers: {offered:?}");
        assert!(cgroup.cpu_used().is_some(), "cpu.stat is in every cgroup v2");
        cgroup.remove().unwrap();
    }
}
