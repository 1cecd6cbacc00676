//! Kernel routes and settings the agent adds on the TUN backend, remembered so that
//! they are removed again (pod removed, node removed, SIGTERM) and the node is left
//! as it was found.
//!
//! On the TUN backend the kernel forwards pod traffic: remote pod blocks are routed
//! into the TUN device (the dataplane encapsulates them), each local pod is routed to
//! its veth, the pod's gateway is answered by proxy ARP on that veth, and IP
//! forwarding is on.

use std::collections::BTreeSet;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("`{cmd}` failed: {detail}")]
pub struct RouteError {
    cmd: String,
    detail: String,
}

fn ip(args: &[&str]) -> Result<(), RouteError> {
    let cmd = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| RouteError {
            cmd: cmd.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(RouteError {
            cmd,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Routes (`dest dev`) and sysctls this agent set, undone on drop.
#[derive(Debug, Default)]
pub struct KernelRoutes {
    routes: BTreeSet<(String, String)>,
    /// sysctl key → value before we changed it.
    sysctls: Vec<(String, String)>,
}

impl KernelRoutes {
    /// Routes `dest` (a prefix) out of `dev`, replacing what was there.
    pub fn add(&mut self, dest: &str, dev: &str) -> Result<(), RouteError> {
        ip(&["route", "replace", dest, "dev", dev])?;
        self.routes.insert((dest.to_string(), dev.to_string()));
        Ok(())
    }

    /// Removes a route this agent added.
    pub fn remove(&mut self, dest: &str, dev: &str) {
        if self.routes.remove(&(dest.to_string(), dev.to_string())) {
            if let Err(e) = ip(&["route", "del", dest, "dev", dev]) {
                tracing::debug!(error = %e, "route already gone");
            }
        }
    }

    /// Keeps exactly `wanted` among the routes through `dev`.
    pub fn sync_dev(&mut self, dev: &str, wanted: &[String]) -> Result<(), RouteError> {
        let stale: Vec<String> = self
            .routes
            .iter()
            .filter(|(d, v)| v == dev && !wanted.contains(d))
            .map(|(d, _)| d.clone())
            .collect();
        for d in stale {
            self.remove(&d, dev);
        }
        for d in wanted {
            self.add(d, dev)?;
        }
        Ok(())
    }

    /// Sets a sysctl (dotted key), remembering the old value for [`Drop`].
    pub fn sysctl(&mut self, key: &str, value: &str) -> Result<(), RouteError> {
        let path = sysctl_path(key);
        let err = |e: std::io::Error| RouteError {
            cmd: format!("sysctl {key}={value}"),
            detail: e.to_string(),
        };
        let old = std::fs::read_to_string(&path)
            .map_err(err)?
            .trim()
            .to_string();
        if old != value {
            std::fs::write(&path, value).map_err(err)?;
            if !self.sysctls.iter().any(|(k, _)| k == key) {
                self.sysctls.push((key.to_string(), old));
            }
        }
        Ok(())
    }

    /// Undoes everything.
    pub fn clear(&mut self) {
        let routes: Vec<(String, String)> = self.routes.iter().cloned().collect();
        for (d, v) in routes {
            self.remove(&d, &v);
        }
        for (key, old) in self.sysctls.drain(..).rev() {
            // Interfaces that are gone took their per-interface keys with them.
            let _ = std::fs::write(sysctl_path(&key), old);
        }
    }
}

impl Drop for KernelRoutes {
    fn drop(&mut self) {
        self.clear();
    }
}
