//! What a command costs, and the bound on its memory.
//!
//! **Accounting.** A command's CPU time (user and system) and its peak memory come from
//! what the kernel keeps: the `rusage` of the reaped leader (`wait4`: its own time
//! plus that of every descendant it reaped, and the largest resident set among them),
//! the cgroup's `cpu.stat` and `memory.peak` where those controllers are enabled, and
//! the watchdog's samples below (the sum of the resident sets of all the command's
//! processes at a time, which `ru_maxrss`, a maximum, does not see).
//!
//! **The memory limit.** Where the memory controller is available to the command's
//! cgroup, the kernel enforces it (`memory.max`, no swap, the whole cgroup killed on
//! out-of-memory: `memory.oom.group`), and reports it in `memory.events`. Elsewhere (a
//! cgroup v2 without the controller, as on hybrid hosts whose memory controller is on
//! cgroup v1; no cgroup at all; macOS) the job's own `poll` loop is the watchdog: at
//! least every [`SAMPLE_EVERY`] it sums the resident memory of the command's
//! processes (its cgroup's, or its process tree's) and kills them all as soon as the
//! sum passes the limit. It may overshoot by what the processes allocate in one
//! interval; it costs no thread.

use std::time::{Duration, Instant};

use rustix::process::Pid;

/// How often the watchdog samples a command's memory.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// What a command, or all the commands of a job, used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResourceUsage {
    /// The most memory seen in use at once, in bytes: the largest of the kernel's peak
    /// of the command's cgroup, the largest resident set among its reaped processes,
    /// and the watchdog's samples of the sum of their resident sets.
    pub peak_memory_bytes: u64,
    /// User and system CPU time of the command and the descendants it waited for (of
    /// its whole cgroup where the cpu controller counts it).
    pub cpu_time: Duration,
    /// Whether the command was killed for passing its memory limit.
    pub memory_limit_reached: bool,
}

impl ResourceUsage {
    /// `other` after `self`: the larger peak, the CPU times added.
    pub(crate) fn add(&mut self, other: &ResourceUsage) {
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
        self.cpu_time += other.cpu_time;
        self.memory_limit_reached |= other.memory_limit_reached;
    }
}

/// The watchdog of one command: its samples, and whether it passed its limit.
pub(super) struct Watchdog {
    limit: Option<u64>,
    next: Instant,
    /// The largest sum of resident sets sampled.
    pub(super) peak: u64,
}

impl Watchdog {
    /// A watchdog enforcing `limit` (bytes), if there is one and the kernel does not.
    pub(super) fn new(limit: Option<u64>) -> Watchdog {
        Watchdog { limit, next: Instant::now(), peak: 0 }
    }

    /// When the next sample is due; `None` without a limit to watch.
    pub(super) fn due(&self) -> Option<Instant> {
        self.limit.map(|_| self.next)
    }

    /// Whether a sample is due now.
    pub(super) fn is_due(&self) -> bool {
        self.limit.is_some() && Instant::now() >= self.next
    }

    /// Samples `pids`, the command's processes now; whether their memory passed the
    /// limit.
    pub(super) fn sample(&mut self, pids: Vec<Pid>) -> bool {
        let Some(limit) = self.limit else { return false };
        self.next = Instant::now() + SAMPLE_EVERY;
        let resident: u64 = pids.into_iter().map(resident_bytes).sum();
        self.peak = self.peak.max(resident);
        resident > limit
    }
}

/// The resident memory of `pid` (0 if it is gone): the second field of
/// `/proc/PID/statm`, in pages.
fn resident_bytes(pid: Pid) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{}/statm", pid.as_raw_nonzero())).unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()).unwrap_or(0) * page_bytes()
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The `oom_kill` count of a cgroup's `memory.events`.
pub(super) fn oom_kills(events: &str) -> u64 {
    events.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// The `usage_usec` of a cgroup's `cpu.stat`.
pub(super) fn cpu_usage(stat: &str) -> Option<Duration> {
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|n| n.trim().parse().ok())
        .map(Duration::from_micros)
}

/// `cpu.weight` for a nice value, as the kernel weighs tasks of that nice value
/// (`sched_prio_to_weight`, where nice 0 is 1024 and cgroup weight 100).
pub(super) fn cpu_weight(nice: i32) -> u64 {
    const WEIGHTS: [u64; 40] = [
        88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916, 9548, 7620, 6100, 4904, 3906,
        3121, 2501, 1991, 1586, 1277, 1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45,
        36, 29, 23, 18, 15,
    ];
    let weight = WEIGHTS[(nice.clamp(-20, 19) + 20) as usize];
    (weight * 100 / 1024).clamp(1, 10000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_counters_are_read() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(oom_kills(events), 1);
        assert_eq!(oom_kills("low 0\n"), 0);
        let stat = "usage_usec 5300000\nuser_usec 5000000\nsystem_usec 300000\n";
        assert_eq!(cpu_usage(stat), Some(Duration::from_millis(5300)));
        assert_eq!(cpu_usage(""), None);
    }

    #[test]
    fn nice_values_weigh_as_the_scheduler_weighs_them() {
        assert_eq!(cpu_weight(0), 100);
        assert_eq!(cpu_weight(10), 10);
        assert_eq!(cpu_weight(19), 1);
        assert_eq!(cpu_weight(-20), 8668);
        assert_eq!(cpu_weight(99), cpu_weight(19));
    }

    #[test]
    fn the_watchdog_samples_when_due_and_keeps_the_peak() {
        let none = Watchdog::new(None);
        assert_eq!(none.due(), None);
        assert!(!none.is_due(), "no limit, no sample");
        let me = Pid::from_raw(std::process::id() as i32).unwrap();
        let mut dog = Watchdog::new(Some(1));
        assert!(dog.is_due());
        assert!(dog.sample(vec![me, me]), "this process uses more than a byte");
        assert!(dog.peak > 0);
        assert!(!dog.is_due(), "not due again before the interval");
        let mut generous = Watchdog::new(Some(u64::MAX));
        assert!(!generous.sample(vec![me]));
    }
}
