//! Everything the runtime tells the plugin, parsed in one place: the `CNI_*`
//! environment variables, the network configuration on stdin and `CNI_ARGS`.
//! Input comes from the runtime and, through it, from users: nothing here panics,
//! every refusal is a [`CniError`] with the specification's code (fuzzed by
//! `fuzz/fuzz_targets/cni_config.rs`).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::result::{CniError, ErrorCode, SUPPORTED_VERSIONS};
use crate::agent::addresses::AttachmentKey;

pub use crate::agent::config::DEFAULT_AGENT_SOCKET;
/// Largest stdin the plugin reads (a configuration with a large prevResult fits).
pub const MAX_STDIN: usize = 1 << 20;

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl CniCommand {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => CniCommand::Add,
            "DEL" => CniCommand::Del,
            "CHECK" => CniCommand::Check,
            "VERSION" => CniCommand::Version,
            "STATUS" => CniCommand::Status,
            "GC" => CniCommand::Gc,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Version => "VERSION",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
        }
    }

    /// The first specification version that has this command.
    fn since(self) -> (u32, u32, u32) {
        match self {
            CniCommand::Add | CniCommand::Del | CniCommand::Version => (0, 1, 0),
            CniCommand::Check => (0, 4, 0),
            CniCommand::Status | CniCommand::Gc => (1, 1, 0),
        }
    }
}

/// The environment of one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: CniCommand,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    /// `CNI_ARGS`, in order (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...).
    pub args: Vec<(String, String)>,
}

impl Invocation {
    /// Reads the `CNI_*` variables through `get`, checking what `command` needs.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let bad_env = |msg: String| CniError::new(ErrorCode::InvalidEnvironment, msg);
        let text = get("CNI_COMMAND").unwrap_or_default();
        let command = CniCommand::parse(&text)
            .ok_or_else(|| bad_env(format!("CNI_COMMAND {text:?} is not a CNI command")))?;
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let inv = Invocation {
            command,
            container_id: nonempty("CNI_CONTAINERID"),
            netns: nonempty("CNI_NETNS"),
            ifname: nonempty("CNI_IFNAME"),
            args: parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?,
        };
        let (need_id, need_netns, need_ifname) = match command {
            CniCommand::Add | CniCommand::Check => (true, true, true),
            // DEL works when the netns is already gone.
            CniCommand::Del => (true, false, true),
            CniCommand::Version | CniCommand::Status | CniCommand::Gc => (false, false, false),
        };
        for (needed, value, name) in [
            (need_id, &inv.container_id, "CNI_CONTAINERID"),
            (need_netns, &inv.netns, "CNI_NETNS"),
            (need_ifname, &inv.ifname, "CNI_IFNAME"),
        ] {
            if needed && value.is_none() {
                return Err(bad_env(format!("{} needs {name}", command.label())));
            }
        }
        if let Some(id) = &inv.container_id {
            check_container_id(id)?;
        }
        if let Some(ifname) = &inv.ifname {
            check_ifname(ifname)?;
        }
        Ok(inv)
    }

    /// The attachment this invocation is about (ADD, CHECK, DEL).
    pub fn attachment(&self) -> Result<AttachmentKey, CniError> {
        match (&self.container_id, &self.ifname) {
            (Some(c), Some(i)) => Ok(AttachmentKey {
                container_id: c.clone(),
                ifname: i.clone(),
            }),
            _ => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                "CNI_CONTAINERID and CNI_IFNAME are needed",
            )),
        }
    }

    /// A `CNI_ARGS` value (`K8S_POD_NAME`, ...).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The specification's rule for container IDs: a letter or digit, then letters,
/// digits, `_`, `.` or `-`.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_CONTAINERID {id:?} is not a valid container ID"),
        ))
    }
}

/// Linux interface names: 1-15 bytes, no `/`, `:` or white space, not `.`/`..`.
fn check_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0');
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_IFNAME {name:?} is not a valid interface name"),
        ))
    }
}

/// `CNI_ARGS`: `K=V` pairs separated by `;` (empty pieces are skipped).
pub fn parse_cni_args(text: &str) -> Result<Vec<(String, String)>, CniError> {
    text.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    CniError::new(
                        ErrorCode::InvalidEnvironment,
                        format!("CNI_ARGS piece {pair:?} is not KEY=VALUE"),
                    )
                })
        })
        .collect()
}

/// The network configuration on stdin: the fields the specification defines that
/// this plugin reads, and ours. Unknown fields are ignored, as the specification
/// asks.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    /// The agent's control socket.
    pub agent_socket: PathBuf,
    /// Where the one log line per invocation goes; stderr when absent or unwritable.
    pub log_file: Option<PathBuf>,
    /// The result of the plugins before this one (ADD when chained; CHECK, DEL).
    pub prev_result: Option<Value>,
    /// GC: the attachments that stay; everything else is released. `None` when the
    /// runtime sent no list (which GC refuses rather than read as "keep nothing").
    pub valid_attachments: Option<Vec<AttachmentKey>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default)]
    plugin_type: String,
    #[serde(default)]
    agent_socket: Option<PathBuf>,
    #[serde(default)]
    log_file: Option<PathBuf>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<AttachmentKey>>,
    /// The name the 1.1.0 specification used by mistake; libcni sends both.
    #[serde(rename = "cni.dev/attachments", default)]
    attachments: Option<Vec<AttachmentKey>>,
}

fn version_triple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

impl NetConf {
    /// Parses stdin for `command` and checks that the version is one this plugin
    /// speaks and that the command exists in it.
    pub fn parse(stdin: &[u8], command: CniCommand) -> Result<Self, CniError> {
        if stdin.len() > MAX_STDIN {
            return Err(CniError::new(
                ErrorCode::Decode,
                format!("network configuration over {MAX_STDIN} bytes"),
            ));
        }
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(ErrorCode::Decode, "cannot decode the network configuration")
                .with_details(e.to_string())
        })?;
        let version = raw.cni_version;
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "cniVersion {version:?} is not supported (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if version_triple(&version).is_none_or(|v| v < command.since()) {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("{} does not exist in CNI {version}", command.label()),
            ));
        }
        if command != CniCommand::Version && raw.name.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "the network configuration has no name",
            ));
        }
        if let Some(prev) = &raw.prev_result
            && !prev.is_object()
        {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "prevResult is not an object",
            ));
        }
        Ok(NetConf {
            cni_version: version,
            name: raw.name,
            plugin_type: raw.plugin_type,
            agent_socket: raw
                .agent_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET)),
            log_file: raw.log_file,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Invocation, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Invocation::from_env(&|k| m.get(k).cloned())
    }

    #[test]
    fn environment_per_command() {
        let add = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1.x_y"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-0;;"),
        ])
        .unwrap();
        assert_eq!(add.command, CniCommand::Add);
        assert_eq!(add.arg("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(add.attachment().unwrap().to_string(), "abc-1.x_y/eth0");
        let missing = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a")]).unwrap_err();
        assert_eq!(missing.code.code(), 4);
        // DEL without a netns (it is gone) is fine.
        env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        env(&[("CNI_COMMAND", "STATUS")]).unwrap();
        for bad in [
            ("CNI_CONTAINERID", "-a"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_IFNAME", "a-name-too-long-x"),
            ("CNI_IFNAME", ".."),
            ("CNI_IFNAME", "a:b"),
            ("CNI_ARGS", "novalue"),
        ] {
            let mut pairs = vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
            ];
            pairs.retain(|(k, _)| *k != bad.0);
            pairs.push(bad);
            assert_eq!(env(&pairs).unwrap_err().code.code(), 4, "{bad:?}");
        }
        assert_eq!(
            env(&[("CNI_COMMAND", "EXPLODE")]).unwrap_err().code.code(),
            4
        );
    }

    #[test]
    fn configuration_versions_and_fields() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"hybridway","type":"hybridway-cni",
                "agentSocket":"/tmp/a.sock","unknownField":[1,2],
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
            CniCommand::Gc,
        )
        .unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(conf.valid_attachments.map(|v| v.len()), Some(1));
        let old = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n"}"#, CniCommand::Add).unwrap();
        assert_eq!(old.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        let err = |s: &[u8], c| NetConf::parse(s, c).unwrap_err().code.code();
        assert_eq!(
            err(br#"{"cniVersion":"0.3.1","name":"n"}"#, CniCommand::Check),
            1
        );
        assert_eq!(
            err(br#"{"cniVersion":"1.0.0","name":"n"}"#, CniCommand::Gc),
            1
        );
        assert_eq!(
            err(br#"{"cniVersion":"9.9.9","name":"n"}"#, CniCommand::Add),
            1
        );
        assert_eq!(err(b"{", CniCommand::Add), 6);
        assert_eq!(err(br#"{"cniVersion":"1.1.0"}"#, CniCommand::Add), 7);
        assert_eq!(
            err(
                br#"{"cniVersion":"1.1.0","name":"n","prevResult":3}"#,
                CniCommand::Add
            ),
            7
        );
    }
}
