//! The Secrets the agent's BGP speaker needs, and no other. The names come from the
//! `BGPClusterConfig`s that list this node as a speaker; each name gets its own watch
//! (`metadata.name=` field selector), started and stopped as those resources
//! change. The API server authorizes such a list/watch against the Role's
//! `resourceNames`, so RBAC names the password Secrets one by one
//! (deploy/bgp-secrets-rbac.yaml, one Role for the agents and the controller)
//! instead of every Secret of kube-system.
//!
//! ```text
//!  configs store ─► referenced(node) ─► SecretWatches::follow(names)
//!                                          ├─ new name ─► spawn watch_one(name) ─┐
//!                                          └─ gone name ─► abort its task        │
//!  watch_one: list+watch metadata.name=<name> ─► Seen (shared map) ─► changed ◄──┘
//! ```
//!
//! A Secret that is missing, has no such key, or whose name the API server
//! refuses (any 4xx but 408/429) is absent from [`SecretWatches::secrets`]; one
//! not listed yet or that RBAC does not let the agent read is
//! [`SecretWatches::unreadable`]: either way the peer's status names it and the
//! speaker runs its other sessions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::crd::BGPClusterConfig;
use crate::bgp::password::{Secrets, UNREADABLE_FIX, Unreadable};

/// The names of the Secrets that the peers of `node`'s speaker entries refer to,
/// across every config (whether the config selects the node is `bgp_view::plan`'s
/// call; watching a name too many is harmless, one too few is not).
pub fn referenced<'a>(
    node: &str,
    configs: impl IntoIterator<Item = &'a BGPClusterConfig>,
) -> BTreeSet<String> {
    configs
        .into_iter()
        .flat_map(|c| &c.spec.bgp_speakers)
        .filter(|s| s.name == node)
        .flat_map(|s| &s.peers)
        .filter_map(|p| p.auth_password.as_ref())
        .map(|a| a.secret_key_ref.name.clone())
        .collect()
}

/// What one name's watch has seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// Not listed yet: the speaker waits for it rather than start without a key.
    Pending,
    /// Listed: no such Secret, or a name the API server does not take.
    Absent,
    /// RBAC does not let this agent read it (not in the Role's resourceNames).
    Forbidden,
    /// key → bytes.
    Present(BTreeMap<String, Vec<u8>>),
}

impl Seen {
    fn of(secret: Option<&Secret>) -> Seen {
        match secret {
            None => Seen::Absent,
            Some(s) => Seen::Present(
                s.data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
            ),
        }
    }
}

type Shared = Arc<Mutex<BTreeMap<String, Seen>>>;

/// The per-name Secret watches of one agent. Dropping it stops them.
pub struct SecretWatches {
    api: Api<Secret>,
    seen: Shared,
    tasks: BTreeMap<String, JoinHandle<()>>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for SecretWatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the bytes are passwords.
        f.debug_struct("SecretWatches")
            .field("names", &self.tasks.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SecretWatches {
    /// Watches nothing yet; the receiver ticks after every change any watch sees.
    pub fn new(api: Api<Secret>) -> (SecretWatches, watch::Receiver<u64>) {
        let (changed, rx) = watch::channel(0);
        let w = SecretWatches {
            api,
            seen: Shared::default(),
            tasks: BTreeMap::new(),
            changed,
        };
        (w, rx)
    }

    /// Watches exactly `wanted`: starts the new names, stops the others.
    pub fn follow(&mut self, wanted: &BTreeSet<String>) {
        let gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(task) = self.tasks.remove(&name) {
                task.abort();
            }
            self.lock().remove(&name);
            tracing::info!(secret = %name, "no longer watching BGP password Secret");
        }
        for name in wanted {
            if self.tasks.contains_key(name) {
                continue;
            }
            self.lock().insert(name.clone(), Seen::Pending);
            tracing::info!(secret = %name, "watching BGP password Secret");
            let task = tokio::spawn(watch_one(
                self.api.clone(),
                name.clone(),
                self.seen.clone(),
                self.changed.clone(),
            ));
            self.tasks.insert(name.clone(), task);
        }
    }

    /// The watched names not listed yet (the peers that use them wait) or that
    /// RBAC keeps from this agent (their status says so).
    pub fn unreadable(&self) -> BTreeMap<String, Unreadable> {
        self.lock()
            .iter()
            .filter_map(|(name, seen)| match seen {
                Seen::Pending => Some((name.clone(), Unreadable::Pending)),
                Seen::Forbidden => Some((name.clone(), Unreadable::Forbidden)),
                Seen::Absent | Seen::Present(_) => None,
            })
            .collect()
    }

    /// name → key → bytes of the watched Secrets that exist and are readable.
    pub fn secrets(&self) -> Secrets {
        self.lock()
            .iter()
            .filter_map(|(name, seen)| match seen {
                Seen::Present(data) => Some((name.clone(), data.clone())),
                Seen::Pending | Seen::Absent | Seen::Forbidden => None,
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SecretWatches {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

/// The status code when the API server refused the request for good (a 4xx but
/// a timeout or throttling): the Role does not name the Secret (403), or the name
/// is not one the API server takes (400). Retrying will not help until the user
/// changes the Role or the name; the peers that use it see it as absent.
fn refusal(e: &watcher::Error) -> Option<u16> {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return None,
    };
    ((400..500).contains(&code) && code != 408 && code != 429).then_some(code)
}

/// Lists and watches the one Secret `name` until aborted, recording what it sees.
async fn watch_one(api: Api<Secret>, name: String, seen: Shared, changed: watch::Sender<u64>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    // The object of a re-list, committed at its end (a re-list that no longer
    // finds it means the Secret is gone).
    let mut listed: Option<Secret> = None;
    let mut refused = false;
    while let Some(ev) = events.next().await {
        let now = match ev {
            Ok(watcher::Event::Init) => {
                listed = None;
                continue;
            }
            Ok(watcher::Event::InitApply(s)) => {
                if s.name_any() == name {
                    listed = Some(s);
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                refused = false;
                Seen::of(listed.take().as_ref())
            }
            Ok(watcher::Event::Apply(s)) if s.name_any() == name => Seen::of(Some(&s)),
            Ok(watcher::Event::Delete(s)) if s.name_any() == name => Seen::Absent,
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => continue,
            Err(e) => match refusal(&e) {
                Some(code) => {
                    if !refused {
                        if code == 403 {
                            tracing::warn!(secret = %name, fix = UNREADABLE_FIX, "the agent may not read this BGP password Secret");
                        } else {
                            tracing::warn!(secret = %name, code, error = %e, "the API server refuses to list this BGP password Secret; its peers run without it until the name is fixed");
                        }
                        refused = true;
                    }
                    if code == 403 {
                        Seen::Forbidden
                    } else {
                        Seen::Absent
                    }
                }
                None => {
                    tracing::debug!(secret = %name, error = %e, "Secret watch failed; retrying");
                    continue;
                }
            },
        };
        let mut map = seen.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = map.get_mut(&name) else {
            return; // no longer wanted; the task is being aborted
        };
        if *slot != now {
            *slot = now;
            drop(map);
            changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::crd::{AuthPassword, BGPClusterConfigSpec, BgpPeer, BgpSpeaker, SecretKeyRef};

    fn peer(name: &str, secret: Option<&str>) -> BgpPeer {
        BgpPeer {
            name: name.into(),
            peer_asn: 65001,
            peer_address: "198.18.0.1".into(),
            auth_password: secret.map(|s| AuthPassword {
                secret_key_ref: SecretKeyRef {
                    name: s.into(),
                    key: "password".into(),
                },
            }),
        }
    }

    fn config(name: &str, speakers: Vec<(&str, Vec<BgpPeer>)>) -> BGPClusterConfig {
        BGPClusterConfig::new(
            name,
            BGPClusterConfigSpec {
                local_asn: 65010,
                node_selector: Default::default(),
                bgp_speakers: speakers
                    .into_iter()
                    .map(|(n, peers)| BgpSpeaker {
                        name: n.into(),
                        peers,
                    })
                    .collect(),
            },
        )
    }

    #[test]
    fn only_the_secrets_of_this_nodes_peers_are_watched() {
        let a = config(
            "a",
            vec![
                (
                    "s0",
                    vec![
                        peer("sw1", Some("pw-a")),
                        peer("sw2", None),
                        peer("sw3", Some("pw-a")),
                    ],
                ),
                ("s1", vec![peer("sw1", Some("pw-other-node"))]),
            ],
        );
        let b = config("b", vec![("s0", vec![peer("sw9", Some("pw-b"))])]);
        let c = config("c", vec![("s7", vec![peer("sw1", Some("pw-c"))])]);
        let names = referenced("s0", [&a, &b, &c]);
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["pw-a".to_string(), "pw-b".to_string()]
        );
        assert!(referenced("s5", [&a, &b, &c]).is_empty());
    }

    #[test]
    fn a_listed_secret_keeps_its_keys_and_a_missing_one_is_absent() {
        let s = Secret {
            data: Some(BTreeMap::from([(
                "password".to_string(),
                k8s_openapi::ByteString(b"pw".to_vec()),
            )])),
            ..Secret::default()
        };
        assert_eq!(
            Seen::of(Some(&s)),
            Seen::Present(BTreeMap::from([("password".into(), b"pw".to_vec())]))
        );
        assert_eq!(Seen::of(None), Seen::Absent);
    }

    fn api_error(code: u16) -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(
            kube::core::Status::failure("test", "Test")
                .with_code(code)
                .boxed(),
        ))
    }

    #[test]
    fn any_final_refusal_ends_the_wait_and_a_passing_failure_does_not() {
        for code in [400, 403, 404, 422] {
            assert_eq!(refusal(&api_error(code)), Some(code), "{code}");
        }
        for code in [408, 429, 500, 503] {
            assert_eq!(refusal(&api_error(code)), None, "{code}");
        }
    }
}
