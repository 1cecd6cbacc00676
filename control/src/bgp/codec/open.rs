//! OPEN message and the capabilities we speak (RFC 4271 §4.2, RFC 5492).

use std::net::Ipv4Addr;

use super::{DecodeError, EncodeError, Reader, err, patch_len_u8};

/// Address family identifier (IANA). Total: unknown values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Afi {
    Ipv4,
    Ipv6,
    Unknown(u16),
}

impl From<u16> for Afi {
    fn from(v: u16) -> Self {
        match v {
            1 => Afi::Ipv4,
            2 => Afi::Ipv6,
            n => Afi::Unknown(n),
        }
    }
}

impl From<Afi> for u16 {
    fn from(a: Afi) -> u16 {
        match a {
            Afi::Ipv4 => 1,
            Afi::Ipv6 => 2,
            Afi::Unknown(n) => n,
        }
    }
}

/// Subsequent address family identifier (IANA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Safi {
    Unicast,
    Unknown(u8),
}

impl From<u8> for Safi {
    fn from(v: u8) -> Self {
        match v {
            1 => Safi::Unicast,
            n => Safi::Unknown(n),
        }
    }
}

impl From<Safi> for u8 {
    fn from(s: Safi) -> u8 {
        match s {
            Safi::Unicast => 1,
            Safi::Unknown(n) => n,
        }
    }
}

/// An (AFI, SAFI) pair: one routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AfiSafi {
    pub afi: Afi,
    pub safi: Safi,
}

impl AfiSafi {
    pub const IPV4_UNICAST: AfiSafi = AfiSafi {
        afi: Afi::Ipv4,
        safi: Safi::Unicast,
    };
    pub const IPV6_UNICAST: AfiSafi = AfiSafi {
        afi: Afi::Ipv6,
        safi: Safi::Unicast,
    };

    pub fn name(&self) -> String {
        match (self.afi, self.safi) {
            (Afi::Ipv4, Safi::Unicast) => "ipv4-unicast".into(),
            (Afi::Ipv6, Safi::Unicast) => "ipv6-unicast".into(),
            (a, s) => format!("afi{}-safi{}", u16::from(a), u8::from(s)),
        }
    }
}

/// One family in the graceful-restart capability (RFC 4724 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrFamily {
    pub family: AfiSafi,
    /// The "F" bit: forwarding state for this family survived the restart.
    pub forwarding_preserved: bool,
}

/// The graceful-restart capability value (RFC 4724 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// The "R" bit: the sender has just restarted.
    pub restarting: bool,
    /// Seconds the peer should keep our routes after the session drops (12 bits).
    pub restart_time: u16,
    pub families: Vec<GrFamily>,
}

/// A capability in an OPEN (RFC 5492). Unknown ones are kept as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// RFC 4760.
    Multiprotocol(AfiSafi),
    /// RFC 2918.
    RouteRefresh,
    /// RFC 4724.
    GracefulRestart(GracefulRestart),
    /// RFC 6793.
    FourOctetAs(u32),
    Unknown {
        code: u8,
        value: Vec<u8>,
    },
}

impl Capability {
    fn decode(code: u8, value: &[u8]) -> Result<Capability, DecodeError> {
        let bad = || DecodeError::new(err::OPEN, err::OPEN_UNSPECIFIC, Vec::new());
        let mut r = Reader::new(value, (err::OPEN, err::OPEN_UNSPECIFIC));
        let cap = match code {
            1 => {
                let afi = r.u16()?;
                let _reserved = r.u8()?;
                let safi = r.u8()?;
                Capability::Multiprotocol(AfiSafi {
                    afi: afi.into(),
                    safi: safi.into(),
                })
            }
            2 => Capability::RouteRefresh,
            64 => {
                let word = r.u16()?;
                let mut families = Vec::new();
                while !r.is_empty() {
                    let afi = r.u16()?;
                    let safi = r.u8()?;
                    let flags = r.u8()?;
                    families.push(GrFamily {
                        family: AfiSafi {
                            afi: afi.into(),
                            safi: safi.into(),
                        },
                        forwarding_preserved: flags & 0x80 != 0,
                    });
                }
                Capability::GracefulRestart(GracefulRestart {
                    restarting: word & 0x8000 != 0,
                    restart_time: word & 0x0fff,
                    families,
                })
            }
            65 => Capability::FourOctetAs(r.u32()?),
            code => {
                return Ok(Capability::Unknown {
                    code,
                    value: value.to_vec(),
                });
            }
        };
        if !r.is_empty() {
            return Err(bad());
        }
        Ok(cap)
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let code = match self {
            Capability::Multiprotocol(_) => 1,
            Capability::RouteRefresh => 2,
            Capability::GracefulRestart(_) => 64,
            Capability::FourOctetAs(_) => 65,
            Capability::Unknown { code, .. } => *code,
        };
        out.push(code);
        let len_at = out.len();
        out.push(0);
        match self {
            Capability::Multiprotocol(f) => {
                out.extend_from_slice(&u16::from(f.afi).to_be_bytes());
                out.push(0);
                out.push(u8::from(f.safi));
            }
            Capability::RouteRefresh => {}
            Capability::GracefulRestart(gr) => {
                let word = (u16::from(gr.restarting) << 15) | (gr.restart_time & 0x0fff);
                out.extend_from_slice(&word.to_be_bytes());
                for f in &gr.families {
                    out.extend_from_slice(&u16::from(f.family.afi).to_be_bytes());
                    out.push(u8::from(f.family.safi));
                    out.push(if f.forwarding_preserved { 0x80 } else { 0 });
                }
            }
            Capability::FourOctetAs(asn) => out.extend_from_slice(&asn.to_be_bytes()),
            Capability::Unknown { value, .. } => out.extend_from_slice(value),
        }
        patch_len_u8(out, len_at, "capability")
    }
}

/// An OPEN message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 2-byte "My Autonomous System" field (AS_TRANS when the real ASN is wider).
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// An OPEN for `asn`, filling the 2-byte field and the 4-octet capability.
    pub fn new(
        asn: u32,
        hold_time: u16,
        bgp_id: Ipv4Addr,
        mut capabilities: Vec<Capability>,
    ) -> Self {
        let my_as = u16::try_from(asn).unwrap_or(super::AS_TRANS);
        if !capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
        {
            capabilities.push(Capability::FourOctetAs(asn));
        }
        Open {
            version: 4,
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    /// The sender's ASN: the 4-octet capability if present, else the 2-byte field.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }

    pub fn families(&self) -> impl Iterator<Item = AfiSafi> + '_ {
        self.capabilities.iter().filter_map(|c| match c {
            Capability::Multiprotocol(f) => Some(*f),
            _ => None,
        })
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    pub fn has(&self, pred: impl Fn(&Capability) -> bool) -> bool {
        self.capabilities.iter().any(pred)
    }

    pub(super) fn decode(body: &[u8]) -> Result<Open, DecodeError> {
        let mut r = Reader::new(body, (err::OPEN, err::OPEN_UNSPECIFIC));
        let version = r.u8()?;
        if version != 4 {
            // RFC 4271 §6.2: data is the largest supported version, 2 octets.
            return Err(DecodeError::new(
                err::OPEN,
                err::OPEN_UNSUPPORTED_VERSION,
                vec![0, 4],
            ));
        }
        let my_as = r.u16()?;
        let hold_time = r.u16()?;
        if hold_time == 1 || hold_time == 2 {
            return Err(DecodeError::new(
                err::OPEN,
                err::OPEN_UNACCEPTABLE_HOLD_TIME,
                Vec::new(),
            ));
        }
        let bgp_id = Ipv4Addr::from(r.u32()?);
        if bgp_id.is_unspecified() {
            return Err(DecodeError::new(
                err::OPEN,
                err::OPEN_BAD_BGP_ID,
                Vec::new(),
            ));
        }
        let params_len = usize::from(r.u8()?);
        if r.remaining() != params_len {
            return Err(DecodeError::new(
                err::OPEN,
                err::OPEN_UNSPECIFIC,
                Vec::new(),
            ));
        }
        let mut capabilities = Vec::new();
        while !r.is_empty() {
            let ptype = r.u8()?;
            let plen = usize::from(r.u8()?);
            let value = r.bytes(plen)?;
            if ptype != 2 {
                return Err(DecodeError::new(
                    err::OPEN,
                    err::OPEN_UNSUPPORTED_PARAMETER,
                    Vec::new(),
                ));
            }
            let mut cr = Reader::new(value, (err::OPEN, err::OPEN_UNSPECIFIC));
            while !cr.is_empty() {
                let code = cr.u8()?;
                let clen = usize::from(cr.u8()?);
                let cval = cr.bytes(clen)?;
                capabilities.push(Capability::decode(code, cval)?);
            }
        }
        Ok(Open {
            version,
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        })
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(self.version);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        let params_at = out.len();
        out.push(0);
        if !self.capabilities.is_empty() {
            // One Capabilities parameter holding all capabilities (RFC 5492 §4).
            out.push(2);
            let cap_len_at = out.len();
            out.push(0);
            for c in &self.capabilities {
                c.encode(out)?;
            }
            patch_len_u8(out, cap_len_at, "capabilities parameter")?;
        }
        patch_len_u8(out, params_at, "optional parameters")
    }
}
