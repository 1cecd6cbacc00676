//! Kernel routes, policy rules, sysctls and the nftables table the agent sets,
//! remembered so that they are removed again (pod removed, node removed, SIGTERM)
//! and the node is left as it was found. What to set is decided elsewhere
//! ([`super::host_routing`], the runtime for pods); this module only applies and
//! undoes.
//!
//! The originals (sysctl values, where the `lookup local` rule was) are also written
//! to a journal under the state directory: an agent killed with `kill -9` and started
//! again finds the values from before its *first* start there, instead of taking the
//! killed agent's settings for the node's own, and the next clean stop restores them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::state_file::write_atomically;

#[derive(Debug, thiserror::Error)]
#[error("`{cmd}` failed: {detail}")]
pub struct RouteError {
    cmd: String,
    detail: String,
}

/// Runs `ip ARGS`; its stderr is the error. (Also the BGP speaker's import.)
pub(crate) fn ip(args: &[&str]) -> Result<String, RouteError> {
    run("ip", args)
}

/// Runs `program ARGS`; its stderr is the error.
fn run(program: &str, args: &[&str]) -> Result<String, RouteError> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
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
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `nft` script of [`KernelRoutes::set_notrack`] (one transaction): declaring
/// the table before deleting it makes the delete succeed whether or not it was there.
fn notrack_script(rules: &[String]) -> String {
    let mut script = format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n  chain raw_prerouting {{\n    type filter hook prerouting priority raw; policy accept;\n"
    );
    for rule in rules {
        script.push_str(&format!("    {rule}\n"));
    }
    script.push_str("  }\n}\n");
    script
}

fn ip_owned(verb: [&str; 2], args: &[String]) -> Result<String, RouteError> {
    let mut all: Vec<&str> = verb.to_vec();
    all.extend(args.iter().map(String::as_str));
    ip(&all)
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Arguments of `ip route replace` / `ip route del` (`198.19.2.0/24 dev hw0 table
/// 26744`): the route's identity.
pub type RouteArgs = Vec<String>;

/// Arguments of `ip rule add` / `ip rule del`, including the `pref`.
pub type RuleArgs = Vec<String>;

/// Splits `"a b c"` into route or rule arguments.
pub fn args(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// Routes, rules and sysctls this agent set, undone on drop.
#[derive(Debug, Default)]
pub struct KernelRoutes {
    /// `ip address` arguments (`198.19.1.0/32 dev hwhost`), removed on clear.
    addresses: Vec<Vec<String>>,
    routes: BTreeSet<RouteArgs>,
    rules: Vec<RuleArgs>,
    /// The priority the `lookup local` rule was moved to from 0, to put the agent's
    /// rules in front of it.
    local_rule_moved_to: Option<u32>,
    /// sysctl key → value before we changed it.
    sysctls: Vec<(String, String)>,
    /// Where the originals are kept until a clean stop.
    journal: Option<PathBuf>,
    /// Whether [`NFT_TABLE`] is ours to delete.
    nft_table: bool,
}

/// The agent's own nftables table (`ip` family), replaced whole on start, deleted on
/// stop; a killed agent's is replaced by the next start.
pub const NFT_TABLE: &str = "hybridway";

/// What the journal keeps: the node as found before the first start.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Originals {
    sysctls: Vec<(String, String)>,
    local_rule_moved_to: Option<u32>,
}

impl KernelRoutes {
    /// Keeps the originals in `journal`; a journal left by an agent that did not stop
    /// cleanly provides them.
    pub fn with_journal(journal: PathBuf) -> Self {
        let found: Originals = match std::fs::read_to_string(&journal) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(journal = %journal.display(), error = %e, "the node's original settings cannot be read back; what the last agent changed stays as it is");
                Originals::default()
            }),
            Err(_) => Originals::default(),
        };
        if !found.sysctls.is_empty() || found.local_rule_moved_to.is_some() {
            tracing::info!(journal = %journal.display(), "the last agent did not stop cleanly: restoring the node to the state it found");
        }
        KernelRoutes {
            addresses: Vec::new(),
            routes: BTreeSet::new(),
            rules: Vec::new(),
            sysctls: found.sysctls,
            local_rule_moved_to: found.local_rule_moved_to,
            journal: Some(journal),
            nft_table: false,
        }
    }

    fn save_journal(&self) {
        let Some(path) = &self.journal else { return };
        let originals = Originals {
            sysctls: self.sysctls.clone(),
            local_rule_moved_to: self.local_rule_moved_to,
        };
        let text = serde_json::to_string(&originals).unwrap_or_default();
        let result = write_atomically(path, text.as_bytes());
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep the node's original settings; a killed agent would not restore them");
        }
    }

    /// Routes `dest` (a prefix) out of `dev` in the main table, replacing what was there.
    pub fn add(&mut self, dest: &str, dev: &str) -> Result<(), RouteError> {
        self.add_route(args(&format!("{dest} dev {dev}")))
    }

    /// Removes a main-table route this agent added with [`KernelRoutes::add`].
    pub fn remove(&mut self, dest: &str, dev: &str) {
        self.remove_route(&args(&format!("{dest} dev {dev}")));
    }

    /// `ip route replace <route>`, remembered.
    pub fn add_route(&mut self, route: RouteArgs) -> Result<(), RouteError> {
        ip_owned(["route", "replace"], &route)?;
        self.routes.insert(route);
        Ok(())
    }

    /// Removes a route this agent added.
    pub fn remove_route(&mut self, route: &RouteArgs) {
        if self.routes.remove(route)
            && let Err(e) = ip_owned(["route", "del"], route)
        {
            tracing::debug!(error = %e, "route already gone");
        }
    }

    /// Keeps exactly `wanted` among this agent's routes that `belongs` selects (the
    /// routes of one device, of one table).
    pub fn sync(
        &mut self,
        belongs: impl Fn(&RouteArgs) -> bool,
        wanted: &[RouteArgs],
    ) -> Result<(), RouteError> {
        let stale: Vec<RouteArgs> = self
            .routes
            .iter()
            .filter(|r| belongs(r) && !wanted.contains(r))
            .cloned()
            .collect();
        for r in &stale {
            self.remove_route(r);
        }
        for r in wanted {
            if !self.routes.contains(r) {
                self.add_route(r.clone())?;
            }
        }
        Ok(())
    }

    /// `ip address replace <address>` (`198.19.1.0/32 dev hwhost`), remembered.
    pub fn add_address(&mut self, address: Vec<String>) -> Result<(), RouteError> {
        ip_owned(["address", "replace"], &address)?;
        if !self.addresses.contains(&address) {
            self.addresses.push(address);
        }
        Ok(())
    }

    /// `ip rule add <rule>`, remembered (removed in reverse order on [`clear`]).
    ///
    /// [`clear`]: KernelRoutes::clear
    pub fn add_rule(&mut self, rule: RuleArgs) -> Result<(), RouteError> {
        // A rule left by an agent that was killed would be duplicated: drop it first.
        let _ = ip_owned(["rule", "del"], &rule);
        ip_owned(["rule", "add"], &rule)?;
        self.rules.push(rule);
        Ok(())
    }

    /// Moves the kernel's `lookup local` rule from priority 0 to `pref`, so that rules
    /// at lower priorities are consulted before the node's own addresses are (a reply
    /// to a masqueraded flow is addressed to the node but belongs to the dataplane).
    /// Does nothing when the rule is not at 0 (moved already, by us or by another
    /// network plugin); [`clear`] puts it back.
    ///
    /// [`clear`]: KernelRoutes::clear
    pub fn move_local_rule(&mut self, pref: u32) -> Result<(), RouteError> {
        let rules = ip(&["-4", "rule", "show"])?;
        let at_zero = rules.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("0:") && l.ends_with("lookup local")
        });
        if !at_zero {
            return Ok(());
        }
        // Journal first: an agent killed between the two steps must still find
        // where the rule went.
        self.local_rule_moved_to = Some(pref);
        self.save_journal();
        let pref_s = pref.to_string();
        let moved = ip(&["-4", "rule", "add", "pref", &pref_s, "lookup", "local"])
            .and_then(|_| ip(&["-4", "rule", "del", "pref", "0", "lookup", "local"]));
        if moved.is_err() {
            let _ = ip(&["-4", "rule", "del", "pref", &pref_s, "lookup", "local"]);
            self.local_rule_moved_to = None;
            self.save_journal();
        }
        moved.map(|_| ())
    }

    /// Replaces [`NFT_TABLE`] with one whose chain at the raw priority of
    /// `prerouting` untracks the packets `rules` match (nft rule statements ending in
    /// `notrack`); one transaction, so a table left by a killed agent goes with it.
    pub fn set_notrack(&mut self, rules: &[String]) -> Result<(), RouteError> {
        run("nft", &[&notrack_script(rules)])?;
        self.nft_table = true;
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
            // Journal first: the original must be on disk before it is overwritten.
            let first = !self.sysctls.iter().any(|(k, _)| k == key);
            if first {
                self.sysctls.push((key.to_string(), old));
                self.save_journal();
            }
            if let Err(e) = std::fs::write(&path, value) {
                if first {
                    self.sysctls.pop();
                    self.save_journal();
                }
                return Err(err(e));
            }
        }
        Ok(())
    }

    /// Undoes everything.
    pub fn clear(&mut self) {
        let mut keep_journal = false;
        for rule in std::mem::take(&mut self.rules).iter().rev() {
            if let Err(e) = ip_owned(["rule", "del"], rule) {
                tracing::debug!(error = %e, "rule already gone");
            }
        }
        if let Some(pref) = self.local_rule_moved_to.take() {
            let pref = pref.to_string();
            let restored = ip(&["-4", "rule", "add", "pref", "0", "lookup", "local"])
                .and_then(|_| ip(&["-4", "rule", "del", "pref", &pref, "lookup", "local"]));
            if let Err(e) = restored {
                tracing::warn!(error = %e, "could not put the local rule back at priority 0; the journal keeps it for the next agent");
                keep_journal = true;
            }
        }
        let routes: Vec<RouteArgs> = self.routes.iter().cloned().collect();
        for r in &routes {
            self.remove_route(r);
        }
        for a in std::mem::take(&mut self.addresses).iter().rev() {
            if let Err(e) = ip_owned(["address", "del"], a) {
                tracing::debug!(error = %e, "address already gone");
            }
        }
        if std::mem::take(&mut self.nft_table)
            && let Err(e) = run("nft", &["delete", "table", "ip", NFT_TABLE])
        {
            tracing::debug!(error = %e, "nftables table already gone");
        }
        for (key, old) in self.sysctls.drain(..).rev() {
            // Interfaces that are gone took their per-interface keys with them.
            let _ = std::fs::write(sysctl_path(&key), old);
        }
        if let Some(path) = &self.journal
            && !keep_journal
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for KernelRoutes {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notrack_script_replaces_the_whole_table() {
        let script = notrack_script(&["iifname \"eth0\" tcp dport 30000-32767 notrack".into()]);
        assert_eq!(
            script,
            "table ip hybridway\n\
             delete table ip hybridway\n\
             table ip hybridway {\n  \
               chain raw_prerouting {\n    \
                 type filter hook prerouting priority raw; policy accept;\n    \
                 iifname \"eth0\" tcp dport 30000-32767 notrack\n  \
               }\n\
             }\n"
        );
    }
}
