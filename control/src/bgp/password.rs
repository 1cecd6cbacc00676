//! Where TCP-MD5 passwords come from. A trait, so the Kubernetes Secret source can be
//! added by the agent's wiring without touching the speaker.

use std::fmt;
use std::path::PathBuf;

use super::config::PasswordRef;
use super::sys::MD5_MAX_KEY_LEN;

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
        "Secret kube-system/{name} key {key} is not available (Kubernetes wiring not configured)"
    )]
    SecretUnavailable { name: String, key: String },
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

/// A `secretKeyRef` before the Kubernetes wiring exists: always unavailable, which
/// the speaker reports in status instead of crashing.
#[derive(Debug, Clone)]
pub struct UnwiredSecret {
    pub name: String,
    pub key: String,
}

impl PasswordSource for UnwiredSecret {
    fn password(&self) -> Result<Password, PasswordError> {
        Err(PasswordError::SecretUnavailable {
            name: self.name.clone(),
            key: self.key.clone(),
        })
    }
}

/// The source a config entry names.
pub fn from_ref(r: &PasswordRef) -> Result<Box<dyn PasswordSource>, PasswordError> {
    match (&r.file, &r.secret_key_ref) {
        (Some(path), None) => Ok(Box::new(FilePassword(path.clone()))),
        (None, Some(s)) => Ok(Box::new(UnwiredSecret {
            name: s.name.clone(),
            key: s.key.clone(),
        })),
        _ => Err(PasswordError::Ambiguous),
    }
}
