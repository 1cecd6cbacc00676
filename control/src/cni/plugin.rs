//! One invocation of the plugin: the six CNI commands, each a short conversation
//! with the agent (the owner of addresses and of the dataplane) plus the veth work
//! in [`pod_link`].

use std::time::Duration;

use serde_json::Value;

use super::config::{CniCommand, Invocation, NetConf};
use super::pod_link::{self, LinkError};
use super::result::{self, Attached, CniError, ErrorCode};
use crate::agent::control::{self, ControlError, Request, Response};

/// What one invocation printed and how it went (for the log line).
#[derive(Debug)]
pub struct Outcome {
    /// What goes on stdout (a result or an error object); nothing for some commands.
    pub stdout: Option<Value>,
    pub result: Result<String, CniError>,
    /// The configuration, when it could be read (for the log destination).
    pub conf: Option<NetConf>,
}

/// Runs the invocation described by the environment (`get`) and stdin.
pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> (Option<Invocation>, Outcome) {
    let inv = match Invocation::from_env(get) {
        Ok(inv) => inv,
        Err(e) => return (None, failed(&e, "1.1.0", None)),
    };
    let conf = match NetConf::parse(stdin, inv.command) {
        Ok(c) => c,
        Err(e) => {
            // VERSION must answer even for a version it does not speak.
            if inv.command == CniCommand::Version && e.code == ErrorCode::IncompatibleVersion {
                let out = Outcome {
                    stdout: Some(result::version_result("1.1.0")),
                    result: Ok("versions listed".into()),
                    conf: None,
                };
                return (Some(inv), out);
            }
            return (Some(inv), failed(&e, "1.1.0", None));
        }
    };
    let version = conf.cni_version.clone();
    let done = match inv.command {
        CniCommand::Add => add(&inv, &conf).map(|(v, s)| (Some(v), s)),
        CniCommand::Del => del(&inv, &conf).map(|s| (None, s)),
        CniCommand::Check => check(&inv, &conf).map(|s| (None, s)),
        CniCommand::Gc => gc(&conf).map(|s| (None, s)),
        CniCommand::Status => status(&conf).map(|s| (None, s)),
        CniCommand::Version => Ok((
            Some(result::version_result(&version)),
            "versions listed".into(),
        )),
    };
    let out = match done {
        Ok((stdout, summary)) => Outcome {
            stdout,
            result: Ok(summary),
            conf: Some(conf),
        },
        Err(e) => failed(&e, &version, Some(conf)),
    };
    (Some(inv), out)
}

fn failed(e: &CniError, version: &str, conf: Option<NetConf>) -> Outcome {
    Outcome {
        stdout: Some(e.to_json(version)),
        result: Err(e.clone()),
        conf,
    }
}

/// How long the plugin waits for the agent's answer: the agent attaches one veth
/// at a time, and a node starting 100 pods at once queues 100 attachments (the
/// runtime's own timeout for a CNI call is minutes).
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Asks the agent; an agent that cannot be reached means "try again later".
fn ask(conf: &NetConf, req: &Request) -> Result<Response, CniError> {
    control::call_within(&conf.agent_socket, req, AGENT_TIMEOUT).map_err(|e| match e {
        ControlError::Socket { .. } | ControlError::BadResponse(_) => CniError::new(
            ErrorCode::TryAgainLater,
            "the hybridway agent is not reachable; try again later",
        )
        .with_details(e.to_string()),
        ControlError::Refused(msg) => CniError::new(ErrorCode::Internal, msg),
    })
}

fn link_err(e: LinkError) -> CniError {
    let code = match e {
        LinkError::Mismatch(_) => ErrorCode::CheckMismatch,
        LinkError::Netns { .. } => ErrorCode::Io,
        LinkError::Ip { .. } => ErrorCode::Internal,
    };
    CniError::new(code, e.to_string())
}

fn netns_of(inv: &Invocation) -> Result<&str, CniError> {
    inv.netns
        .as_deref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is needed"))
}

/// ADD: veth first (the agent attaches an interface that exists), then the
/// address and attachment from the agent, then the pod's side. Anything that
/// fails undoes what came before it.
fn add(inv: &Invocation, conf: &NetConf) -> Result<(Value, String), CniError> {
    let key = inv.attachment()?;
    let netns = netns_of(inv)?;
    let host = pod_link::host_ifname(&key);
    let mac = pod_link::pod_mac(&key);
    // A previous ADD of the same attachment that failed half-way.
    pod_link::delete_host(&host).map_err(link_err)?;
    pod_link::create(&host, &key.ifname, mac, netns).map_err(link_err)?;
    let undo_link = || {
        let _ = pod_link::delete_host(&host);
    };
    let resp = ask(
        conf,
        &Request::CniAdd {
            attachment: key.clone(),
            interface: host.clone(),
            mac,
            netns: netns.to_owned(),
        },
    )
    .inspect_err(|_| undo_link())?;
    let Some(addr) = resp.address else {
        undo_link();
        return Err(CniError::new(
            ErrorCode::Internal,
            "the agent answered ADD without an address",
        ));
    };
    let configured = pod_link::set_host_mtu(&host, addr.mtu).and_then(|()| {
        pod_link::configure_pod(netns, &key.ifname, addr.ip, addr.gateway, addr.mtu)
    });
    if let Err(e) = configured {
        let _ = ask(conf, &Request::CniDel { attachment: key });
        undo_link();
        return Err(link_err(e));
    }
    let attached = Attached {
        host_ifname: host,
        host_mac: None,
        pod_ifname: key.ifname.clone(),
        pod_mac: mac.to_string(),
        netns: netns.to_owned(),
        ip: addr.ip,
        gateway: addr.gateway,
    };
    let out = result::add_result(&conf.cni_version, &attached, conf.prev_result.as_ref());
    Ok((out, format!("ip={} mtu={}", addr.ip, addr.mtu)))
}

/// DEL: the agent detaches and frees (idempotent), then the veth goes, if it is
/// still there (it is not when the netns was deleted first).
fn del(inv: &Invocation, conf: &NetConf) -> Result<String, CniError> {
    let key = inv.attachment()?;
    let resp = ask(
        conf,
        &Request::CniDel {
            attachment: key.clone(),
        },
    )?;
    let host = pod_link::host_ifname(&key);
    let deleted = pod_link::delete_host(&host).map_err(link_err)?;
    let freed = resp.released.first().map(|a| a.ip.to_string());
    Ok(format!(
        "released={} veth={}",
        freed.as_deref().unwrap_or("none"),
        if deleted { "deleted" } else { "gone" }
    ))
}

/// CHECK: the agent still has the attachment with the address ADD returned, and
/// the pod's interface still has that address and the default route.
fn check(inv: &Invocation, conf: &NetConf) -> Result<String, CniError> {
    let key = inv.attachment()?;
    let netns = netns_of(inv)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidConfig, "CHECK needs prevResult"))?;
    let expected = result::address_in(prev, &key.ifname).ok_or_else(|| {
        CniError::new(
            ErrorCode::CheckMismatch,
            format!("prevResult has no address for {}", key.ifname),
        )
    })?;
    let resp = ask(
        conf,
        &Request::CniCheck {
            attachment: key.clone(),
        },
    )
    .map_err(|e| {
        if e.code == ErrorCode::Internal {
            CniError::new(ErrorCode::UnknownContainer, e.msg)
        } else {
            e
        }
    })?;
    let Some(addr) = resp.address else {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            format!("{key} is unknown"),
        ));
    };
    if addr.ip != expected {
        return Err(CniError::new(
            ErrorCode::CheckMismatch,
            format!(
                "the agent has {} for {key}, prevResult says {expected}",
                addr.ip
            ),
        ));
    }
    pod_link::check_pod(netns, &key.ifname, addr.ip, addr.gateway).map_err(link_err)?;
    Ok(format!("ip={}", addr.ip))
}

/// GC: the agent frees every attachment not in the valid list; their veths go.
fn gc(conf: &NetConf) -> Result<String, CniError> {
    // A GC without the list would free every pod of the node: a runtime always
    // sends it (empty when nothing is valid), so its absence is a broken request.
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "GC needs cni.dev/valid-attachments (an empty list frees everything)",
        )
    })?;
    let kept = valid.len();
    let resp = ask(conf, &Request::CniGc { valid })?;
    for a in &resp.released {
        if let Err(e) = pod_link::delete_host(&a.interface) {
            tracing::warn!(interface = %a.interface, error = %e, "GC: veth not deleted");
        }
    }
    Ok(format!("released={} kept={}", resp.released.len(), kept))
}

/// STATUS: ready when the agent answers (it has its pod block and runs).
fn status(conf: &NetConf) -> Result<String, CniError> {
    match control::call(&conf.agent_socket, &Request::Status) {
        Ok(_) => Ok("ready".into()),
        Err(e) => Err(CniError::new(
            ErrorCode::NotAvailable,
            "the hybridway agent is not running or not ready",
        )
        .with_details(e.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gc_without_the_valid_list_is_refused_before_asking_the_agent() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"hybridway","type":"hybridway-cni",
                "agentSocket":"/nonexistent/agent.sock"}"#,
            CniCommand::Gc,
        )
        .unwrap();
        let err = gc(&conf).unwrap_err();
        // 7 (invalid configuration), not 11: the agent was never asked.
        assert_eq!(err.code.code(), 7);
    }
}
