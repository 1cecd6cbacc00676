//! Running the current thread inside a named network namespace (`ip netns add`),
//! so a port can be opened on an interface that lives there (tests, the demo).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The calling thread is in namespace `/run/netns/<name>` until this guard drops,
/// then it returns to the namespace it was in. Sockets and programs created while
/// inside stay bound to that namespace.
#[derive(Debug)]
pub struct NetnsGuard {
    original: File,
}

fn setns(file: &File) -> io::Result<()> {
    // SAFETY: setns(2) on a namespace fd we hold open; it only changes the calling
    // thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl NetnsGuard {
    /// Moves the calling thread into network namespace `name`.
    pub fn enter(name: &str) -> io::Result<Self> {
        Self::enter_path(&format!("/run/netns/{name}"))
    }

    /// Moves the calling thread into the network namespace file at `path` (what a
    /// container runtime passes as `CNI_NETNS`: `/var/run/netns/cni-…`,
    /// `/proc/<pid>/ns/net`). Children spawned from this thread while the guard
    /// lives start in that namespace too.
    pub fn enter_path(path: &str) -> io::Result<Self> {
        let original = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(path)?;
        setns(&target)?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original) {
            tracing::error!(error = %e, "cannot return to the original network namespace");
        }
    }
}
