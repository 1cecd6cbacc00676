//! Pod addresses on this node: the one owner of which address belongs to which
//! attachment (container ID + interface name, the CNI's key), handed out from the
//! node's pod block.
//!
//! The CNI plugin never picks an address itself: it asks the agent over the control
//! socket, and the agent serves one request at a time, so concurrent plugin
//! invocations cannot be given one address twice. Every change is written to the
//! address file (`control.addressFile`, under `/var/lib/hybridway` by default)
//! before it is answered, atomically (`state_file`), so a plugin or agent restarted
//! between ADD and DEL finds the allocation where it left it. Addresses are handed
//! out round-robin after the last one given, so an address just released is not
//! reused at once while stale ARP or conntrack entries may still point at it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use hybridway_dataplane::tables::Prefix;
use hybridway_dataplane::wire::MacAddr;
use serde::{Deserialize, Serialize};

use super::state_file::write_atomically;

/// What one allocation belongs to: the CNI's (container ID, interface name) pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// One address given to one attachment, with the host-side veth it was attached by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub key: AttachmentKey,
    pub ip: Ipv4Addr,
    /// Host-side interface of the pod's veth.
    pub interface: String,
    #[serde(with = "super::table_builder::mac_string")]
    pub mac: MacAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("address file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("no free address left in this node's pod block {0}")]
    Exhausted(Prefix),
    #[error("the pod block {0} is not IPv4")]
    NotIpv4(Prefix),
}

/// The address file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AddressFile {
    /// The block the addresses came from; a file for another block is not reused.
    block: String,
    /// The last address handed out (round-robin cursor).
    last: Option<Ipv4Addr>,
    allocations: Vec<Allocation>,
}

/// The allocations of this node, mirrored in the address file.
#[derive(Debug)]
pub struct PodAddressBook {
    path: PathBuf,
    block: Prefix,
    /// Never handed out: the block's gateway.
    gateway: Ipv4Addr,
    last: Option<Ipv4Addr>,
    by_key: BTreeMap<AttachmentKey, Allocation>,
}

impl PodAddressBook {
    /// Loads the address file at `path` (an absent file is an empty book). An
    /// allocation outside `block` (the node got another block) is dropped with a
    /// warning: its pod cannot be reached any more anyway.
    pub fn load(path: &Path, block: Prefix, gateway: Ipv4Addr) -> Result<Self, AddressError> {
        if !block.is_ipv4() {
            return Err(AddressError::NotIpv4(block));
        }
        let file_err = |message: String| AddressError::File {
            path: path.to_owned(),
            message,
        };
        let file: AddressFile = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AddressFile::default(),
            Err(e) => return Err(file_err(e.to_string())),
        };
        let mut book = PodAddressBook {
            path: path.to_owned(),
            block,
            gateway,
            last: file.last,
            by_key: BTreeMap::new(),
        };
        for a in file.allocations {
            if !block.contains(IpAddr::V4(a.ip)) {
                tracing::warn!(attachment = %a.key, ip = %a.ip, %block, "dropping an address outside this node's pod block");
                continue;
            }
            book.by_key.insert(a.key.clone(), a);
        }
        Ok(book)
    }

    pub fn get(&self, key: &AttachmentKey) -> Option<&Allocation> {
        self.by_key.get(key)
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.by_key.values()
    }

    /// Gives `key` an address (the one it has, when it has one) and saves the book.
    /// `taken`: addresses in use by pods this book does not know (attached by hand).
    pub fn allocate(
        &mut self,
        key: &AttachmentKey,
        interface: &str,
        mac: MacAddr,
        taken: &dyn Fn(Ipv4Addr) -> bool,
    ) -> Result<Allocation, AddressError> {
        if let Some(a) = self.by_key.get(key)
            && a.interface == interface
            && a.mac == mac
        {
            return Ok(a.clone());
        }
        let ip = match self.by_key.get(key) {
            Some(a) => a.ip,
            None => self.next_free(taken)?,
        };
        let a = Allocation {
            key: key.clone(),
            ip,
            interface: interface.to_owned(),
            mac,
        };
        let before = (self.by_key.insert(key.clone(), a.clone()), self.last);
        self.last = Some(ip);
        if let Err(e) = self.save() {
            // The book in memory never runs ahead of the file: an address only
            // memory knew would be handed out again after a restart.
            match before.0 {
                Some(old) => self.by_key.insert(key.clone(), old),
                None => self.by_key.remove(key),
            };
            self.last = before.1;
            return Err(e);
        }
        Ok(a)
    }

    /// Frees `key`'s address (nothing to do when it has none) and saves the book.
    pub fn release(&mut self, key: &AttachmentKey) -> Result<Option<Allocation>, AddressError> {
        let Some(gone) = self.by_key.remove(key) else {
            return Ok(None);
        };
        if let Err(e) = self.save() {
            self.by_key.insert(key.clone(), gone);
            return Err(e);
        }
        Ok(Some(gone))
    }

    /// Frees every allocation whose key `keep` rejects; returns them.
    pub fn release_unless(
        &mut self,
        keep: impl Fn(&AttachmentKey) -> bool,
    ) -> Result<Vec<Allocation>, AddressError> {
        let stale: Vec<AttachmentKey> = self.by_key.keys().filter(|k| !keep(k)).cloned().collect();
        let gone: Vec<Allocation> = stale.iter().filter_map(|k| self.by_key.remove(k)).collect();
        if !gone.is_empty()
            && let Err(e) = self.save()
        {
            for a in gone {
                self.by_key.insert(a.key.clone(), a);
            }
            return Err(e);
        }
        Ok(gone)
    }

    /// The first free host address after the last one handed out, wrapping.
    fn next_free(&self, taken: &dyn Fn(Ipv4Addr) -> bool) -> Result<Ipv4Addr, AddressError> {
        let IpAddr::V4(net) = self.block.addr() else {
            return Err(AddressError::NotIpv4(self.block));
        };
        let first = u32::from(net);
        let size = 1u64 << (32 - u32::from(self.block.len()));
        // Network and broadcast addresses are not hosts (a /31 or /32 has neither).
        let (lo, hi) = if size > 2 {
            (u64::from(first) + 1, u64::from(first) + size - 2)
        } else {
            (u64::from(first), u64::from(first) + size - 1)
        };
        let used: BTreeSet<Ipv4Addr> = self.by_key.values().map(|a| a.ip).collect();
        let start = self
            .last
            .map(|l| u64::from(u32::from(l)) + 1)
            .filter(|s| (lo..=hi).contains(s))
            .unwrap_or(lo);
        let span = hi - lo + 1;
        (0..span)
            .map(|i| lo + (start - lo + i) % span)
            .filter_map(|n| u32::try_from(n).ok().map(Ipv4Addr::from))
            .find(|ip| *ip != self.gateway && !used.contains(ip) && !taken(*ip))
            .ok_or(AddressError::Exhausted(self.block))
    }

    fn save(&self) -> Result<(), AddressError> {
        let file = AddressFile {
            block: self.block.to_string(),
            last: self.last,
            allocations: self.by_key.values().cloned().collect(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| AddressError::File {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        write_atomically(&self.path, &text).map_err(|e| AddressError::File {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    fn key(c: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn book(name: &str, block: &str) -> (PodAddressBook, PathBuf) {
        let path =
            std::env::temp_dir().join(format!("hw-addresses-{name}-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let block: Prefix = block.parse().unwrap();
        let IpAddr::V4(net) = block.addr() else {
            panic!()
        };
        let gw = Ipv4Addr::from(u32::from(net) + 1);
        (PodAddressBook::load(&path, block, gw).unwrap(), path)
    }

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    #[test]
    fn every_address_of_a_block_once_then_exhausted_and_survives_a_reload() {
        let (mut b, path) = book("full", "198.19.1.0/29");
        let mut seen = BTreeSet::new();
        // /29: 8 addresses, minus network, broadcast and the gateway .1 = 5.
        for i in 0..5 {
            let a = b
                .allocate(&key(&format!("c{i}")), &format!("if{i}"), MAC, &|_| false)
                .unwrap();
            assert!(seen.insert(a.ip), "{} handed out twice", a.ip);
        }
        assert_eq!(
            seen.iter().map(|ip| ip.octets()[3]).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6]
        );
        assert!(matches!(
            b.allocate(&key("c9"), "if9", MAC, &|_| false),
            Err(AddressError::Exhausted(_))
        ));
        // Asking again for a key that has an address gives the same one.
        let again = b.allocate(&key("c3"), "if3", MAC, &|_| false).unwrap();
        assert_eq!(again.ip.octets()[3], 5);
        let reloaded = PodAddressBook::load(&path, b.block, b.gateway).unwrap();
        assert_eq!(reloaded.allocations().count(), 5);
        assert_eq!(reloaded.get(&key("c0")).unwrap().ip.octets()[3], 2);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_change_that_cannot_be_saved_is_not_kept_in_memory() {
        let (mut b, path) = book("unsaved", "198.19.1.0/29");
        let kept = b.allocate(&key("a"), "ia", MAC, &|_| false).unwrap();
        // A directory that cannot be created: every save fails.
        b.path = PathBuf::from("/proc/hybridway-no-such-dir/addresses.json");
        assert!(b.allocate(&key("b"), "ib", MAC, &|_| false).is_err());
        assert!(b.get(&key("b")).is_none(), "an unsaved address stays free");
        assert!(b.release(&key("a")).is_err());
        assert_eq!(b.get(&key("a")), Some(&kept), "an unsaved release keeps it");
        assert!(b.release_unless(|_| false).is_err());
        assert_eq!(b.allocations().count(), 1);
        b.path = path.clone();
        let next = b.allocate(&key("b"), "ib", MAC, &|_| false).unwrap();
        assert_ne!(next.ip, kept.ip);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn released_addresses_come_back_last_and_taken_ones_are_skipped() {
        let (mut b, path) = book("rr", "198.19.1.0/29");
        let a = b.allocate(&key("a"), "ia", MAC, &|_| false).unwrap();
        assert_eq!(b.release(&key("a")).unwrap().unwrap().ip, a.ip);
        assert_eq!(b.release(&key("a")).unwrap(), None, "release is idempotent");
        let taken = Ipv4Addr::new(198, 19, 1, 3);
        let n = b.allocate(&key("b"), "ib", MAC, &|ip| ip == taken).unwrap();
        assert_eq!(
            n.ip.octets()[3],
            4,
            "after the last one given, skipping a taken one"
        );
        let gone = b.release_unless(|k| k.container_id == "zzz").unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(b.allocations().count(), 0);
        std::fs::remove_file(path).unwrap();
    }
}
