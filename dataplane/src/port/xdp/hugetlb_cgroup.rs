//! How many bytes of 2 MiB huge pages this process's cgroups still let it fault in.
//!
//! A Kubernetes pod's `hugepages-2Mi` limit is a hugetlb cgroup limit. The kernel
//! charges it when a huge page is *faulted*, not when it is mapped (unless the
//! runtime also sets the reservation limit, `hugetlb.2MB.rsvd.max`), so an
//! `mmap(MAP_HUGETLB | MAP_POPULATE)` past the limit succeeds and its populate stops
//! silently: registering the UMEM then fails with EFAULT (measured, kernel 6.18: the
//! socket cannot pin the pages), and any touch of a missing page kills the process
//! with SIGBUS. So the UMEM is checked against the limit before it is mapped, and
//! takes ordinary pages when the limit leaves too little: [`huge_page_headroom`] is
//! the least `limit - usage` over this process's hugetlb cgroup and its ancestors,
//! read from cgroup v2 (`hugetlb.2MB.max`/`.current`) or the v1 hugetlb hierarchy
//! (`hugetlb.2MB.limit_in_bytes`/`.usage_in_bytes`).
//!
//! The parsers take the text of `/proc/self/cgroup` and `/proc/self/mountinfo` and
//! never fail: anything they do not understand means "no limit known", the state of
//! a host without the controller.

use std::path::{Path, PathBuf};

/// The files of one cgroup version that hold a huge-page limit and its usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V2,
    V1,
}

impl Version {
    fn limit_file(self) -> &'static str {
        match self {
            Version::V2 => "hugetlb.2MB.max",
            Version::V1 => "hugetlb.2MB.limit_in_bytes",
        }
    }

    fn usage_file(self) -> &'static str {
        match self {
            Version::V2 => "hugetlb.2MB.current",
            Version::V1 => "hugetlb.2MB.usage_in_bytes",
        }
    }
}

/// Where this process's hugetlb cgroup lies on disk: the hierarchy's mount point,
/// and the cgroup's directory under it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CgroupDir {
    version: Version,
    mount: PathBuf,
    dir: PathBuf,
}

/// The hugetlb headroom of this process in bytes, or `None` when no hugetlb
/// limit applies (no controller, no limit set anywhere, or files not readable).
pub fn huge_page_headroom() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    headroom_from(&cgroups, &mounts, |path| std::fs::read_to_string(path).ok())
}

/// [`huge_page_headroom`] from the texts of `/proc/self/cgroup` and
/// `/proc/self/mountinfo`, reading the cgroup's files with `read` (the fuzz target
/// drives this with arbitrary texts).
pub fn headroom_from(
    proc_cgroup: &str,
    mountinfo: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<u64> {
    headroom_in(&locate(proc_cgroup, mountinfo)?, read)
}

/// Finds the hugetlb cgroup: the v1 hierarchy that has the controller if one is
/// mounted, else the v2 hierarchy (where the controller may or may not be enabled;
/// its files say).
fn locate(proc_cgroup: &str, mountinfo: &str) -> Option<CgroupDir> {
    let mut v2_path = None;
    let mut v1_path = None;
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2_path = Some(path);
        } else if controllers.split(',').any(|c| c == "hugetlb") {
            v1_path = Some(path);
        }
    }
    let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
    let v1 = v1_path.and_then(|path| {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.has_option("hugetlb"))?;
        Some((Version::V1, mount, path))
    });
    let v2 = v2_path.and_then(|path| {
        let mount = mounts.iter().find(|m| m.fstype == "cgroup2")?;
        Some((Version::V2, mount, path))
    });
    let (version, mount, path) = v1.or(v2)?;
    // The cgroup path is relative to the hierarchy's root; the mount may show only a
    // part of it (its `root` field, e.g. inside a container).
    let relative = path.strip_prefix(mount.root).unwrap_or(path);
    let dir = mount.point.join(relative.trim_start_matches('/'));
    Some(CgroupDir {
        version,
        mount: mount.point.clone(),
        dir,
    })
}

/// The least `limit - usage` from the cgroup's directory up to the mount point.
fn headroom_in(found: &CgroupDir, read: impl Fn(&Path) -> Option<String>) -> Option<u64> {
    let mut least: Option<u64> = None;
    let mut dir = found.dir.as_path();
    loop {
        let limit = read(&dir.join(found.version.limit_file())).and_then(|t| parse_limit(&t));
        if let Some(limit) = limit {
            let usage = read(&dir.join(found.version.usage_file()))
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let left = limit.saturating_sub(usage);
            least = Some(least.map_or(left, |l| l.min(left)));
        }
        if dir == found.mount {
            return least;
        }
        dir = match dir.parent() {
            Some(parent) if parent.starts_with(&found.mount) => parent,
            _ => return least,
        };
    }
}

/// A limit file's value: bytes, or `None` for "no limit" (`max` in v2, the
/// largest page-aligned value in v1) and for text that is not a number.
fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    let bytes = text.parse::<u64>().ok()?;
    // v1 reports "unlimited" as LONG_MAX rounded down to a page.
    (bytes < (i64::MAX as u64) / 2).then_some(bytes)
}

/// The fields of a `/proc/self/mountinfo` line this module needs.
#[derive(Debug)]
struct Mount<'a> {
    root: &'a str,
    point: PathBuf,
    fstype: &'a str,
    super_options: &'a str,
}

impl<'a> Mount<'a> {
    /// `36 35 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw`: six
    /// fixed fields, optional ones up to `-`, then type, source and super options.
    fn parse(line: &'a str) -> Option<Self> {
        let (fixed, rest) = line.split_once(" - ")?;
        let mut fixed = fixed.split(' ');
        let root = fixed.nth(3)?;
        let point = fixed.next()?;
        let mut rest = rest.split(' ');
        let fstype = rest.next()?;
        let _source = rest.next()?;
        let super_options = rest.next().unwrap_or("");
        Some(Mount {
            root,
            point: PathBuf::from(unescape_octal(point)),
            fstype,
            super_options,
        })
    }

    fn has_option(&self, name: &str) -> bool {
        self.super_options.split(',').any(|o| o == name)
    }
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const V2_MOUNTS: &str = "\
25 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:4 - cgroup2 cgroup2 rw,nsdelegate
26 1 0:23 / /proc rw - proc proc rw";

    const V1_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup/unified rw shared:5 - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/hugetlb rw shared:6 - cgroup cgroup rw,hugetlb
32 25 0:28 / /sys/fs/cgroup/memory rw shared:7 - cgroup cgroup rw,memory";

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = entries
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect();
        move |p: &Path| map.get(p).cloned()
    }

    #[test]
    fn a_pod_limit_in_cgroup_v2_leaves_limit_minus_usage() {
        let found = locate("0::/kubepods/pod1/agent\n", V2_MOUNTS).unwrap();
        assert_eq!(found.dir, Path::new("/sys/fs/cgroup/kubepods/pod1/agent"));
        let read = files(&[
            (
                "/sys/fs/cgroup/kubepods/pod1/agent/hugetlb.2MB.max",
                "268435456\n",
            ),
            (
                "/sys/fs/cgroup/kubepods/pod1/agent/hugetlb.2MB.current",
                "4194304\n",
            ),
            ("/sys/fs/cgroup/kubepods/hugetlb.2MB.max", "max\n"),
        ]);
        assert_eq!(headroom_in(&found, read), Some(268_435_456 - 4_194_304));
    }

    #[test]
    fn the_tightest_ancestor_wins() {
        let found = locate("0::/kubepods/pod1/agent\n", V2_MOUNTS).unwrap();
        let read = files(&[
            (
                "/sys/fs/cgroup/kubepods/pod1/agent/hugetlb.2MB.max",
                "268435456",
            ),
            ("/sys/fs/cgroup/kubepods/pod1/hugetlb.2MB.max", "8388608"),
            (
                "/sys/fs/cgroup/kubepods/pod1/hugetlb.2MB.current",
                "6291456",
            ),
        ]);
        assert_eq!(headroom_in(&found, read), Some(2 * 1024 * 1024));
    }

    #[test]
    fn no_limit_file_or_max_means_no_limit() {
        let found = locate("0::/\n", V2_MOUNTS).unwrap();
        assert_eq!(headroom_in(&found, files(&[])), None);
        let read = files(&[("/sys/fs/cgroup/hugetlb.2MB.max", "max")]);
        assert_eq!(headroom_in(&found, read), None);
    }

    #[test]
    fn the_v1_hierarchy_is_used_where_the_controller_is_mounted() {
        let cgroups = "12:hugetlb:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc\n";
        let found = locate(cgroups, V1_MOUNTS).unwrap();
        assert_eq!(found.version, Version::V1);
        assert_eq!(found.dir, Path::new("/sys/fs/cgroup/hugetlb/docker/abc"));
        let read = files(&[
            (
                "/sys/fs/cgroup/hugetlb/docker/abc/hugetlb.2MB.limit_in_bytes",
                "0",
            ),
            (
                "/sys/fs/cgroup/hugetlb/hugetlb.2MB.limit_in_bytes",
                "9223372036854771712",
            ),
        ]);
        assert_eq!(headroom_in(&found, read), Some(0));
    }

    #[test]
    fn a_mount_of_part_of_the_hierarchy_is_joined_below_its_root() {
        let mounts = "40 30 0:22 /kubepods/pod1/agent /sys/fs/cgroup ro - cgroup2 cgroup2 rw";
        let found = locate("0::/kubepods/pod1/agent\n", mounts).unwrap();
        assert_eq!(found.dir, Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn mount_points_with_escaped_spaces_are_unescaped() {
        let mount = Mount::parse("1 2 0:3 / /mnt/a\\040b rw - cgroup2 none rw").unwrap();
        assert_eq!(mount.point, Path::new("/mnt/a b"));
    }

    #[test]
    fn garbage_is_no_limit_not_a_panic() {
        for text in ["", ":::", "0::", "x\n-\n - ", "1 2 3 4 - \\9\\", "\\0"] {
            let _ = locate(text, text);
            let _ = Mount::parse(text);
            let _ = unescape_octal(text);
            assert_eq!(parse_limit(text), None);
        }
    }
}
