//! Where TCP-MD5 passwords come from: a file, or a Secret of `kube-system` through
//! the agent's Secret watch ([`SecretStore`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use super::config::PasswordRef;
use super::sys::MD5_MAX_KEY_LEN;

/// What to do about a password Secret RBAC keeps from the agents and the
/// controller (one Role names the readable ones).
pub const UNREADABLE_FIX: &str = "add its name to resourceNames of Role kube-system/hybridway-bgp-secrets (deploy/bgp-secrets-rbac.yaml)";

/// A password. Its `Debug` never shows the value, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    pub fn new(bytes: Vec<u8>) -> Result<Password, PasswordError> {
        if bytes.is_empty() || bytes.len() > MD5_MAX_KEY_LEN {
            return Err(PasswordError::Length(bytes.len()));
        }
        Ok(Password(bytes))
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot read password file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password must be 1-80 bytes, got {0}")]
    Length(usize),
    #[error(
        "Secret kube-system/{name} key {key} is not available (not running in Kubernetes mode)"
    )]
    SecretUnavailable { name: String, key: String },
    #[error("Secret kube-system/{name} does not exist")]
    SecretMissing { name: String },
    #[error("Secret kube-system/{name} not read from the API server yet")]
    SecretPending { name: String },
    #[error(
        "Secret kube-system/{name} is not readable by the agent: {}",
        UNREADABLE_FIX
    )]
    SecretForbidden { name: String },
    #[error("Secret kube-system/{name} has no key {key}")]
    KeyMissing { name: String, key: String },
    #[error("authPassword must name exactly one of file or secretKeyRef")]
    Ambiguous,
}

/// Yields the current password for a peer; called on every connection attempt so a
/// rotated password takes effect without a restart.
pub trait PasswordSource: Send + Sync + fmt::Debug {
    fn password(&self) -> Result<Password, PasswordError>;
}

/// A password in a file (trailing newline ignored), e.g. a mounted Secret.
#[derive(Debug, Clone)]
pub struct FilePassword(pub PathBuf);

impl PasswordSource for FilePassword {
    fn password(&self) -> Result<Password, PasswordError> {
        let mut bytes = std::fs::read(&self.0).map_err(|source| PasswordError::File {
            path: self.0.clone(),
            source,
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Password::new(bytes)
    }
}

/// The Secrets of `kube-system` as the agent's watch last saw them (name → key →
/// bytes), and the names it could not read ([`Unreadable`]). Unwired (the `bgp-speaker` command,
/// no cluster) it holds nothing and says so; a missing or pending Secret or key is
/// a per-peer status reason, never a crash: only the peers that use it wait.
#[derive(Clone, Default)]
pub struct SecretStore(Arc<RwLock<Option<Snapshot>>>);

/// Secret name → key → bytes.
pub type Secrets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// Why the agent's watch has no bytes for a Secret name it follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// Not listed yet: the peers that use it wait.
    Pending,
    /// The API server refused it (403: not in the Role's resourceNames).
    Forbidden,
}

#[derive(Default)]
struct Snapshot {
    secrets: Secrets,
    unreadable: BTreeMap<String, Unreadable>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretStore(<redacted>)")
    }
}

impl SecretStore {
    /// Replaces every Secret (called by the watch after each change) and the
    /// names the watch could not read.
    pub fn replace(&self, secrets: Secrets, unreadable: BTreeMap<String, Unreadable>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(Snapshot {
            secrets,
            unreadable,
        });
    }

    /// The bytes of `name`/`key`.
    pub fn get(&self, name: &str, key: &str) -> Result<Vec<u8>, PasswordError> {
        let guard = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let Some(snapshot) = guard.as_ref() else {
            return Err(PasswordError::SecretUnavailable {
                name: name.into(),
                key: key.into(),
            });
        };
        match snapshot.unreadable.get(name) {
            Some(Unreadable::Pending) => {
                return Err(PasswordError::SecretPending { name: name.into() });
            }
            Some(Unreadable::Forbidden) => {
                return Err(PasswordError::SecretForbidden { name: name.into() });
            }
            None => {}
        }
        let secret = snapshot
            .secrets
            .get(name)
            .ok_or_else(|| PasswordError::SecretMissing { name: name.into() })?;
        secret
            .get(key)
            .cloned()
            .ok_or_else(|| PasswordError::KeyMissing {
                name: name.into(),
                key: key.into(),
            })
    }
}

/// A `secretKeyRef`, read from the store on every connection attempt.
#[derive(Debug, Clone)]
pub struct SecretPassword {
    pub name: String,
    pub key: String,
    pub store: SecretStore,
}

impl PasswordSource for SecretPassword {
    fn password(&self) -> Result<Password, PasswordError> {
        let mut bytes = self.store.get(&self.name, &self.key)?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Password::new(bytes)
    }
}

/// The source a config entry names; `secrets` serves `secretKeyRef`s.
pub fn from_ref(
    r: &PasswordRef,
    secrets: &SecretStore,
) -> Result<Box<dyn PasswordSource>, PasswordError> {
    match (&r.file, &r.secret_key_ref) {
        (Some(path), None) => Ok(Box::new(FilePassword(path.clone()))),
        (None, Some(s)) => Ok(Box::new(SecretPassword {
            name: s.name.clone(),
            key: s.key.clone(),
            store: secrets.clone(),
        })),
        _ => Err(PasswordError::Ambiguous),
    }
}
