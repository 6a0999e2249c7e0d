//! Where this process's cgroup v2 directory is: the `0::` line of
//! `/proc/self/cgroup`, found under a `cgroup2` mount of `/proc/self/mountinfo`
//! (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones, a
//! sub-tree's root in a container), never a fixed path.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's own cgroup v2 directory, when the hierarchy is mounted; looked up
/// once.
pub(in crate::process) fn auto_parent() -> Option<&'static Path> {
    static PARENT: OnceLock<Option<PathBuf>> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let found = own_cgroup_dir(&mountinfo, &own);
            match &found {
                Some(dir) => log::debug!("commands get cgroups under {}", dir.display()),
                None => log::debug!("no cgroup v2 hierarchy of this process is mounted: process trees"),
            }
            found
        })
        .as_deref()
}

/// Where this process's cgroup v2 (`0::PATH` in `cgroup`) appears under a `cgroup2`
/// mount of `mountinfo`.
pub(super) fn own_cgroup_dir(mountinfo: &str, cgroup: &str) -> Option<PathBuf> {
    let own = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim_end();
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = mount.split(' ').collect();
        let (root, point) = (unescape(fields.get(3)?), unescape(fields.get(4)?));
        // A mount of a sub-tree (containers) shows only what is below its root.
        let relative = own.strip_prefix(root.trim_end_matches('/'))?;
        if !(relative.is_empty() || relative.starts_with('/')) {
            return None;
        }
        Some(Path::new(&point).join(relative.trim_start_matches('/')))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|o| bytes[i] == b'\\' && o.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(o) => {
                out.push(o.iter().fold(0u8, |n, b| n.wrapping_mul(8) + (b - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_own_cgroup_is_found_under_the_cgroup2_mount() {
        let own = "6:freezer:/\n0::/\n";
        assert_eq!(own_cgroup_dir(HYBRID, own), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let own = "0::/system.slice/agent.service\n";
        let unified = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_dir(unified, own),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/agent.service"))
        );
    }

    #[test]
    fn no_cgroup2_line_or_mount_means_none() {
        assert_eq!(own_cgroup_dir(HYBRID, "6:freezer:/\n"), None);
        let v1_only = "37 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n";
        assert_eq!(own_cgroup_dir(v1_only, "0::/\n"), None);
    }

    #[test]
    fn a_mount_of_another_subtree_does_not_hold_the_own_cgroup() {
        let sub = "30 23 0:26 /other /mnt/cg\\040x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(own_cgroup_dir(sub, "0::/otherwise/deeper\n"), None);
        assert_eq!(own_cgroup_dir(sub, "0::/other/deeper\n"), Some(PathBuf::from("/mnt/cg x/deeper")));
    }
}
