//! Choosing a backend: what the operator asked for against what the host offers.

use std::fmt;
use std::str::FromStr;

use super::PortError;
use super::probe;
use super::xdp::{AttachMode, SteerRules, XdpSteering};

/// The port backend named in the agent configuration (`backend: auto|af_xdp|tun`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// AF_XDP where the kernel and the interface allow it, else TUN.
    #[default]
    Auto,
    AfXdp,
    Tun,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::AfXdp => "af_xdp",
            Backend::Tun => "tun",
        })
    }
}

/// A backend name that is not one of `auto`, `af_xdp`, `tun`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown port backend {0:?}: expected one of auto, af_xdp, tun")]
pub struct ParseBackendError(pub String);

impl FromStr for Backend {
    type Err = ParseBackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "auto" => Ok(Backend::Auto),
            "af_xdp" | "afxdp" | "xdp" => Ok(Backend::AfXdp),
            "tun" => Ok(Backend::Tun),
            _ => Err(ParseBackendError(s.to_owned())),
        }
    }
}

/// What the host offers, probed without changing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSupport {
    /// `None` when AF_XDP sockets can be created, else what is missing.
    pub xdp_missing: Option<String>,
    /// `None` when `/dev/net/tun` can be opened, else what is missing.
    pub tun_missing: Option<String>,
}

impl HostSupport {
    /// Probes the kernel for XDP sockets and the TUN driver.
    pub fn probe() -> Self {
        HostSupport {
            xdp_missing: probe::xdp_sockets().err(),
            tun_missing: probe::tun_device().err(),
        }
    }

    /// The concrete backend for `wanted` on interface `ifname` (`Auto` resolved), or
    /// an error naming what the host lacks. `Auto` only checks the kernel here; the
    /// caller falls back to TUN when attaching the XDP program to the interface fails
    /// (see [`Backend::fallback`]).
    pub fn resolve(&self, wanted: Backend, ifname: &str) -> Result<Backend, PortError> {
        match wanted {
            Backend::AfXdp => match &self.xdp_missing {
                None => Ok(Backend::AfXdp),
                Some(missing) => Err(PortError::XdpUnavailable {
                    ifname: ifname.to_owned(),
                    missing: missing.clone(),
                }),
            },
            Backend::Tun => match &self.tun_missing {
                None => Ok(Backend::Tun),
                Some(missing) => Err(PortError::TunUnavailable {
                    missing: missing.clone(),
                }),
            },
            Backend::Auto => match (&self.xdp_missing, &self.tun_missing) {
                (None, _) => Ok(Backend::AfXdp),
                (Some(_), None) => {
                    tracing::warn!(
                        ifname,
                        reason = self.xdp_missing.as_deref().unwrap_or_default(),
                        "AF_XDP unavailable, using the TUN backend"
                    );
                    Ok(Backend::Tun)
                }
                (Some(xdp), Some(tun)) => Err(PortError::TunUnavailable {
                    missing: format!("neither backend is available: AF_XDP: {xdp}; TUN: {tun}"),
                }),
            },
        }
    }
}

/// The outcome of [`choose`]: the steering program is attached (AF_XDP), or TUN is
/// to be used and why.
#[derive(Debug)]
pub enum Chosen {
    AfXdp(std::sync::Arc<XdpSteering>),
    Tun {
        /// Why AF_XDP was not used (`None` when TUN was asked for).
        reason: Option<String>,
    },
}

/// Picks the backend for uplink `ifname`: `Auto` uses AF_XDP when the kernel has XDP
/// sockets *and* the interface accepts the steering program, else TUN (with a
/// logged reason); an explicit choice the host cannot honour is an error naming what
/// is missing. On AF_XDP the program is attached on return.
pub fn choose(
    wanted: Backend,
    ifname: &str,
    rules: SteerRules,
    mode: AttachMode,
) -> Result<Chosen, PortError> {
    let host = HostSupport::probe();
    match host.resolve(wanted, ifname)? {
        Backend::Tun => Ok(Chosen::Tun {
            reason: host.xdp_missing.filter(|_| wanted == Backend::Auto),
        }),
        Backend::AfXdp | Backend::Auto => match XdpSteering::attach(ifname, rules, mode) {
            Ok(steering) => Ok(Chosen::AfXdp(steering)),
            Err(e @ PortError::NoSuchInterface(_)) => Err(e),
            Err(e) => match wanted.fallback() {
                Some(Backend::Tun) if host.tun_missing.is_none() => {
                    tracing::warn!(ifname, error = %e, "the interface refused the XDP program; using the TUN backend");
                    Ok(Chosen::Tun {
                        reason: Some(e.to_string()),
                    })
                }
                _ => Err(e),
            },
        },
    }
}

impl Backend {
    /// The backend to try after `self` failed on an interface: `Auto` falls back from
    /// AF_XDP to TUN (a NIC or driver that refuses XDP), an explicit choice does not.
    pub fn fallback(self) -> Option<Backend> {
        match self {
            Backend::Auto => Some(Backend::Tun),
            Backend::AfXdp | Backend::Tun => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_names_say_what_is_allowed() {
        assert_eq!("auto".parse::<Backend>(), Ok(Backend::Auto));
        assert_eq!("AF_XDP".parse::<Backend>(), Ok(Backend::AfXdp));
        assert_eq!("af-xdp".parse::<Backend>(), Ok(Backend::AfXdp));
        assert_eq!(" tun ".parse::<Backend>(), Ok(Backend::Tun));
        let err = "dpdk".parse::<Backend>().unwrap_err();
        assert!(err.to_string().contains("auto, af_xdp, tun"), "{err}");
        for b in [Backend::Auto, Backend::AfXdp, Backend::Tun] {
            assert_eq!(b.to_string().parse::<Backend>(), Ok(b));
        }
    }

    #[test]
    fn an_explicit_choice_the_host_cannot_honour_names_what_is_missing() {
        let host = HostSupport {
            xdp_missing: Some("kernel lacks XDP sockets (CONFIG_XDP_SOCKETS)".into()),
            tun_missing: None,
        };
        let err = host
            .resolve(Backend::AfXdp, "eth0")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "AF_XDP unavailable on eth0: kernel lacks XDP sockets (CONFIG_XDP_SOCKETS); use backend: tun"
        );
        assert_eq!(host.resolve(Backend::Auto, "eth0").unwrap(), Backend::Tun);
        let none = HostSupport {
            xdp_missing: Some("x".into()),
            tun_missing: Some("no /dev/net/tun".into()),
        };
        assert!(
            none.resolve(Backend::Auto, "eth0")
                .unwrap_err()
                .to_string()
                .contains("no /dev/net/tun")
        );
        assert!(none.resolve(Backend::Tun, "eth0").is_err());
        let all = HostSupport {
            xdp_missing: None,
            tun_missing: None,
        };
        assert_eq!(all.resolve(Backend::Auto, "eth0").unwrap(), Backend::AfXdp);
        assert_eq!(Backend::Auto.fallback(), Some(Backend::Tun));
        assert_eq!(Backend::AfXdp.fallback(), None);
    }

    #[test]
    fn this_host_is_probed_without_error() {
        // CI runs as root on a kernel with both; the probe must agree.
        let host = HostSupport::probe();
        assert_eq!(host.xdp_missing, None);
        assert_eq!(host.tun_missing, None);
    }
}
