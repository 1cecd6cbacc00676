//! UPDATE message and path attributes (RFC 4271 §4.3, §5; RFC 4760; RFC 4724 §2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hybridway_dataplane::tables::Prefix;

use super::{
    AS_TRANS, Afi, AfiSafi, CodecOptions, DecodeError, EncodeError, Notification, Reader, Safi,
    err, patch_len_u16,
};

const FLAG_OPTIONAL: u8 = 0x80;
const FLAG_TRANSITIVE: u8 = 0x40;
const FLAG_EXTENDED: u8 = 0x10;

const ORIGIN: u8 = 1;
const AS_PATH: u8 = 2;
const NEXT_HOP: u8 = 3;
const MED: u8 = 4;
const LOCAL_PREF: u8 = 5;
const ATOMIC_AGGREGATE: u8 = 6;
const AGGREGATOR: u8 = 7;
const MP_REACH: u8 = 14;
const MP_UNREACH: u8 = 15;
const AS4_PATH: u8 = 17;
const AS4_AGGREGATOR: u8 = 18;

/// What RFC 7606 says to do with an UPDATE whose attribute failed to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnMalformed {
    /// §7.6, §7.7 and RFC 6793 §6: the attribute does not affect route selection,
    /// drop it and keep the route.
    DiscardAttribute,
    /// §2: withdraw the UPDATE's NLRI, keep the session.
    TreatAsWithdraw,
    /// §7.3 (MP_REACH/MP_UNREACH): the NLRI themselves cannot be trusted.
    ResetSession,
}

fn on_malformed(code: u8) -> OnMalformed {
    match code {
        ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR => OnMalformed::DiscardAttribute,
        MP_REACH | MP_UNREACH => OnMalformed::ResetSession,
        _ => OnMalformed::TreatAsWithdraw,
    }
}

/// ORIGIN attribute values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Igp,
    Egp,
    Incomplete,
}

/// One AS_PATH segment, ASNs always held as 4 octets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsSegment {
    Set(Vec<u32>),
    Sequence(Vec<u32>),
    ConfedSequence(Vec<u32>),
    ConfedSet(Vec<u32>),
}

impl AsSegment {
    fn parts(&self) -> (u8, &[u32]) {
        match self {
            AsSegment::Set(v) => (1, v),
            AsSegment::Sequence(v) => (2, v),
            AsSegment::ConfedSequence(v) => (3, v),
            AsSegment::ConfedSet(v) => (4, v),
        }
    }
}

/// A path attribute. Attributes we do not interpret are carried as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribute {
    Origin(Origin),
    AsPath(Vec<AsSegment>),
    NextHop(Ipv4Addr),
    Med(u32),
    LocalPref(u32),
    /// The AS and BGP Identifier of the speaker that aggregated the route (RFC 4271
    /// §5.1.7), the AS always held as 4 octets: for a 2-octet peer it travels as
    /// AS_TRANS plus AS4_AGGREGATOR (RFC 6793 §4.2.2).
    Aggregator {
        asn: u32,
        address: Ipv4Addr,
    },
    /// RFC 4760 MP_REACH_NLRI for IPv4/IPv6 unicast. IPv6 may carry a global and a
    /// link-local next hop.
    MpReach {
        family: AfiSafi,
        next_hops: Vec<IpAddr>,
        nlri: Vec<Prefix>,
    },
    /// RFC 4760 MP_UNREACH_NLRI. Empty `withdrawn` is the End-of-RIB marker (RFC 4724).
    MpUnreach {
        family: AfiSafi,
        withdrawn: Vec<Prefix>,
    },
    Other {
        flags: u8,
        code: u8,
        value: Vec<u8>,
    },
}

impl Attribute {
    pub fn code(&self) -> u8 {
        match self {
            Attribute::Origin(_) => ORIGIN,
            Attribute::AsPath(_) => AS_PATH,
            Attribute::NextHop(_) => NEXT_HOP,
            Attribute::Med(_) => MED,
            Attribute::LocalPref(_) => LOCAL_PREF,
            Attribute::Aggregator { .. } => AGGREGATOR,
            Attribute::MpReach { .. } => MP_REACH,
            Attribute::MpUnreach { .. } => MP_UNREACH,
            Attribute::Other { code, .. } => *code,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Attribute::Origin(_)
            | Attribute::AsPath(_)
            | Attribute::NextHop(_)
            | Attribute::LocalPref(_) => FLAG_TRANSITIVE,
            Attribute::Med(_) | Attribute::MpReach { .. } | Attribute::MpUnreach { .. } => {
                FLAG_OPTIONAL
            }
            Attribute::Aggregator { .. } => FLAG_OPTIONAL | FLAG_TRANSITIVE,
            Attribute::Other { flags, .. } => *flags & !FLAG_EXTENDED,
        }
    }

    fn encode_value(&self, opts: CodecOptions, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Attribute::Origin(o) => out.push(match o {
                Origin::Igp => 0,
                Origin::Egp => 1,
                Origin::Incomplete => 2,
            }),
            Attribute::AsPath(segments) => encode_as_path(segments, opts.four_octet_as, out),
            Attribute::NextHop(nh) => out.extend_from_slice(&nh.octets()),
            Attribute::Med(v) | Attribute::LocalPref(v) => out.extend_from_slice(&v.to_be_bytes()),
            Attribute::Aggregator { asn, address } => {
                if opts.four_octet_as {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let short = u16::try_from(*asn).unwrap_or(AS_TRANS);
                    out.extend_from_slice(&short.to_be_bytes());
                }
                out.extend_from_slice(&address.octets());
            }
            Attribute::MpReach {
                family,
                next_hops,
                nlri,
            } => {
                out.extend_from_slice(&u16::from(family.afi).to_be_bytes());
                out.push(u8::from(family.safi));
                let nh_len: usize = next_hops
                    .iter()
                    .map(|a| if a.is_ipv4() { 4 } else { 16 })
                    .sum();
                out.push(u8::try_from(nh_len).map_err(|_| EncodeError::FieldTooLong("next hop"))?);
                for nh in next_hops {
                    match nh {
                        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                    }
                }
                out.push(0); // reserved (SNPA count in RFC 2858)
                encode_prefixes(nlri, out);
            }
            Attribute::MpUnreach { family, withdrawn } => {
                out.extend_from_slice(&u16::from(family.afi).to_be_bytes());
                out.push(u8::from(family.safi));
                encode_prefixes(withdrawn, out);
            }
            Attribute::Other { value, .. } => out.extend_from_slice(value),
        }
        Ok(())
    }

    fn encode(&self, opts: CodecOptions, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let flags_at = out.len();
        out.push(self.flags());
        out.push(self.code());
        // Write with a 2-byte length, then shrink to 1 byte when it fits: one pass,
        // and the value is moved at most once.
        let len_at = out.len();
        out.extend_from_slice(&[0, 0]);
        self.encode_value(opts, out)?;
        let value_len = out.len() - len_at - 2;
        if value_len <= 255 {
            out.remove(len_at);
            if let Some(b) = out.get_mut(len_at) {
                *b = value_len as u8;
            }
        } else {
            let v = u16::try_from(value_len).map_err(|_| EncodeError::FieldTooLong("attribute"))?;
            if let Some(f) = out.get_mut(flags_at) {
                *f |= FLAG_EXTENDED;
            }
            if let Some(b) = out.get_mut(len_at..len_at + 2) {
                b.copy_from_slice(&v.to_be_bytes());
            }
        }
        Ok(())
    }
}

/// AS_PATH value bytes; for a 2-octet peer, ASNs above 65535 become AS_TRANS.
fn encode_as_path(segments: &[AsSegment], four_octet: bool, out: &mut Vec<u8>) {
    for seg in segments {
        let (ty, asns) = seg.parts();
        for chunk in asns.chunks(255) {
            out.push(ty);
            out.push(chunk.len() as u8);
            for &asn in chunk {
                if four_octet {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let short = u16::try_from(asn).unwrap_or(AS_TRANS);
                    out.extend_from_slice(&short.to_be_bytes());
                }
            }
        }
    }
}

/// RFC 6793 §4.2.2: for a peer without 4-octet ASNs, the AS4_PATH that carries
/// what AS_TRANS hides in AS_PATH (confederation segments stay out of it).
fn as4_path_for(segments: &[AsSegment]) -> Option<Attribute> {
    if !needs_four_octets(segments) {
        return None;
    }
    let plain: Vec<AsSegment> = segments
        .iter()
        .filter(|s| matches!(s, AsSegment::Set(_) | AsSegment::Sequence(_)))
        .cloned()
        .collect();
    let mut value = Vec::new();
    encode_as_path(&plain, true, &mut value);
    Some(Attribute::Other {
        flags: FLAG_OPTIONAL | FLAG_TRANSITIVE,
        code: AS4_PATH,
        value,
    })
}

/// Whether a path holds an ASN above 65535 (AS_TRANS for a 2-octet peer).
fn needs_four_octets(segments: &[AsSegment]) -> bool {
    segments
        .iter()
        .any(|s| s.parts().1.iter().any(|&a| u16::try_from(a).is_err()))
}

/// Path length as RFC 4271 §9.1.2.2 counts it: a set counts once, confederation
/// segments not at all.
fn path_len(segments: &[AsSegment]) -> usize {
    segments
        .iter()
        .map(|s| match s {
            AsSegment::Sequence(v) => v.len(),
            AsSegment::Set(_) => 1,
            AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_) => 0,
        })
        .sum()
}

/// RFC 6793 §4.2.3: rebuild the 4-octet path from a 2-octet peer's AS_PATH and
/// AS4_PATH: the leading ASNs AS4_PATH does not cover come from AS_PATH, the rest
/// from AS4_PATH. An AS4_PATH longer than AS_PATH is ignored.
fn merge_as4_path(as_path: &[AsSegment], as4_path: Vec<AsSegment>) -> Vec<AsSegment> {
    let (n2, n4) = (path_len(as_path), path_len(&as4_path));
    if n4 > n2 {
        return as_path.to_vec();
    }
    let mut keep = n2 - n4;
    let mut merged = Vec::new();
    for seg in as_path {
        if keep == 0 {
            break;
        }
        match seg {
            AsSegment::Sequence(v) if v.len() > keep => {
                merged.push(AsSegment::Sequence(v.iter().copied().take(keep).collect()));
                keep = 0;
            }
            _ => {
                keep -= path_len(std::slice::from_ref(seg));
                merged.push(seg.clone());
            }
        }
    }
    merged.extend(as4_path);
    merged
}

/// RFC 6793 §4.2.2: for a peer without 4-octet ASNs, the AS4_AGGREGATOR that
/// carries the aggregating AS that AS_TRANS hides in AGGREGATOR.
fn as4_aggregator_for(asn: u32, address: Ipv4Addr) -> Option<Attribute> {
    u16::try_from(asn).is_err().then(|| {
        let mut value = asn.to_be_bytes().to_vec();
        value.extend_from_slice(&address.octets());
        Attribute::Other {
            flags: FLAG_OPTIONAL | FLAG_TRANSITIVE,
            code: AS4_AGGREGATOR,
            value,
        }
    })
}

/// AS4_AGGREGATOR's value: a 4-octet AS and an IPv4 address, 8 bytes exactly
/// (another length is malformed: the attribute is discarded, RFC 6793 §6).
fn decode_as4_aggregator(value: &[u8]) -> Option<(u32, Ipv4Addr)> {
    let (asn, addr) = value.split_at_checked(4)?;
    Some((
        u32::from_be_bytes(asn.try_into().ok()?),
        Ipv4Addr::from(<[u8; 4]>::try_from(addr).ok()?),
    ))
}

/// Takes the attribute with `code` out of `attributes`, if there is one.
fn take_attribute(attributes: &mut Vec<Attribute>, code: u8) -> Option<Attribute> {
    let at = attributes.iter().position(|a| a.code() == code)?;
    Some(attributes.remove(at))
}

/// RFC 6793 §4.1/§4.2.3: a 4-octet peer's AS4_PATH and AS4_AGGREGATOR are dropped.
/// A 2-octet peer's are merged: when its AGGREGATOR names an AS other than
/// AS_TRANS, a 2-octet speaker aggregated after the AS4 attributes were added, so
/// both are ignored; otherwise AS4_AGGREGATOR replaces AGGREGATOR and AS4_PATH is
/// merged into AS_PATH. A malformed one is dropped (§6).
fn merge_received_as4(attributes: &mut Vec<Attribute>, opts: CodecOptions) {
    let as4_path = take_attribute(attributes, AS4_PATH);
    let as4_aggregator = take_attribute(attributes, AS4_AGGREGATOR);
    if opts.four_octet_as {
        return;
    }
    let aggregator = attributes.iter_mut().find_map(|a| match a {
        Attribute::Aggregator { asn, address } => Some((asn, address)),
        _ => None,
    });
    if let Some((asn, address)) = aggregator {
        if *asn != u32::from(AS_TRANS) {
            return;
        }
        if let Some(Attribute::Other { value, .. }) = &as4_aggregator
            && let Some((real, addr)) = decode_as4_aggregator(value)
        {
            (*asn, *address) = (real, addr);
        }
    }
    let Some(Attribute::Other { value, .. }) = as4_path else {
        return;
    };
    let four = CodecOptions {
        four_octet_as: true,
    };
    let Ok(as4_path) = decode_as_path(&value, four) else {
        return;
    };
    for a in attributes.iter_mut() {
        if let Attribute::AsPath(segments) = a {
            *segments = merge_as4_path(segments, as4_path);
            return;
        }
    }
}

/// Bytes needed for one prefix in NLRI encoding.
pub fn prefix_wire_len(p: &Prefix) -> usize {
    1 + usize::from(p.len()).div_ceil(8)
}

fn encode_prefixes(prefixes: &[Prefix], out: &mut Vec<u8>) {
    for p in prefixes {
        let n = usize::from(p.len()).div_ceil(8);
        out.push(p.len());
        match p.addr() {
            IpAddr::V4(a) => out.extend_from_slice(a.octets().get(..n).unwrap_or_default()),
            IpAddr::V6(a) => out.extend_from_slice(a.octets().get(..n).unwrap_or_default()),
        }
    }
}

fn decode_prefixes(bytes: &[u8], afi: Afi, error: (u8, u8)) -> Result<Vec<Prefix>, DecodeError> {
    let mut r = Reader::new(bytes, error);
    let mut out = Vec::new();
    let max: u8 = if afi == Afi::Ipv4 { 32 } else { 128 };
    while !r.is_empty() {
        let len = r.u8()?;
        if len > max {
            return Err(r.short_err());
        }
        let n = usize::from(len).div_ceil(8);
        let raw = r.bytes(n)?;
        let addr = if afi == Afi::Ipv4 {
            let mut o = [0u8; 4];
            o.get_mut(..n)
                .ok_or_else(|| r.short_err())?
                .copy_from_slice(raw);
            IpAddr::V4(Ipv4Addr::from(o))
        } else {
            let mut o = [0u8; 16];
            o.get_mut(..n)
                .ok_or_else(|| r.short_err())?
                .copy_from_slice(raw);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        out.push(Prefix::new(addr, len).map_err(|_| r.short_err())?);
    }
    Ok(out)
}

/// An UPDATE message. `withdrawn` and `nlri` are the IPv4 fields of the base
/// message; other families travel in MP_REACH/MP_UNREACH attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub withdrawn: Vec<Prefix>,
    pub attributes: Vec<Attribute>,
    pub nlri: Vec<Prefix>,
    /// Set by decode when RFC 7606 turned a malformed UPDATE into a withdrawal of
    /// its NLRI: the error a pre-7606 speaker would have reset the session with.
    /// Never encoded.
    pub treat_as_withdraw: Option<Notification>,
}

impl Update {
    /// The End-of-RIB marker for `family` (RFC 4724 §2).
    pub fn end_of_rib(family: AfiSafi) -> Update {
        if family == AfiSafi::IPV4_UNICAST {
            Update::default()
        } else {
            Update {
                attributes: vec![Attribute::MpUnreach {
                    family,
                    withdrawn: Vec::new(),
                }],
                ..Update::default()
            }
        }
    }

    /// Which family's End-of-RIB this is, if it is one.
    pub fn end_of_rib_family(&self) -> Option<AfiSafi> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || self.treat_as_withdraw.is_some() {
            return None;
        }
        match self.attributes.as_slice() {
            [] => Some(AfiSafi::IPV4_UNICAST),
            [Attribute::MpUnreach { family, withdrawn }] if withdrawn.is_empty() => Some(*family),
            _ => None,
        }
    }

    /// Whether the AS_PATH holds an ASN above 65535: sent to a 2-octet peer it
    /// travels as AS_TRANS plus AS4_PATH, which carries no confederation segments,
    /// so such a path need not come back from that peer exactly as it was.
    pub fn path_needs_four_octets(&self) -> bool {
        self.attributes.iter().any(|a| match a {
            Attribute::AsPath(segments) => needs_four_octets(segments),
            _ => false,
        })
    }

    /// Count of prefixes announced (all families).
    pub fn announced(&self) -> impl Iterator<Item = &Prefix> {
        self.nlri
            .iter()
            .chain(self.attributes.iter().flat_map(|a| match a {
                Attribute::MpReach { nlri, .. } => nlri.as_slice(),
                _ => &[],
            }))
    }

    /// Prefixes withdrawn (all families).
    pub fn withdrawn_all(&self) -> impl Iterator<Item = &Prefix> {
        self.withdrawn
            .iter()
            .chain(self.attributes.iter().flat_map(|a| match a {
                Attribute::MpUnreach { withdrawn, .. } => withdrawn.as_slice(),
                _ => &[],
            }))
    }

    pub(super) fn decode(body: &[u8], opts: CodecOptions) -> Result<Update, DecodeError> {
        let malformed = (err::UPDATE, err::UPDATE_MALFORMED_ATTRIBUTE_LIST);
        let mut r = Reader::new(body, malformed);
        let wlen = usize::from(r.u16()?);
        let wbytes = r.bytes(wlen)?;
        let withdrawn = decode_prefixes(
            wbytes,
            Afi::Ipv4,
            (err::UPDATE, err::UPDATE_INVALID_NETWORK),
        )?;
        let alen = usize::from(r.u16()?);
        let abytes = r.bytes(alen)?;
        let nlri = decode_prefixes(
            r.rest(),
            Afi::Ipv4,
            (err::UPDATE, err::UPDATE_INVALID_NETWORK),
        )?;

        let mut attributes = Vec::new();
        let mut treat_as_withdraw: Option<Notification> = None;
        let mut seen = [false; 256];
        let mut ar = Reader::new(abytes, malformed);
        while !ar.is_empty() {
            let start = ar.rest();
            let flags = ar.u8()?;
            let code = ar.u8()?;
            let len = if flags & FLAG_EXTENDED != 0 {
                usize::from(ar.u16()?)
            } else {
                usize::from(ar.u8()?)
            };
            let header_len = if flags & FLAG_EXTENDED != 0 { 4 } else { 3 };
            // A value running past the attribute list is a length error on this
            // attribute (RFC 4271 §6.3), reported with the attribute's bytes. It
            // resets even under RFC 7606: the list cannot be walked further, so an
            // MP_REACH behind it (and its NLRI) cannot be found to withdraw.
            let Ok(value) = ar.bytes(len) else {
                return Err(DecodeError::new(
                    err::UPDATE,
                    err::UPDATE_ATTRIBUTE_LENGTH,
                    start.to_vec(),
                ));
            };
            let whole = start.get(..header_len + len).unwrap_or(start).to_vec();
            let slot = seen
                .get_mut(usize::from(code))
                .ok_or_else(|| ar.short_err())?;
            if *slot {
                // RFC 7606 §3(g): a repeated MP_* attribute makes the NLRI ambiguous
                // (reset); any other repeat is discarded, the first one counts.
                if on_malformed(code) == OnMalformed::ResetSession {
                    return Err(DecodeError::new(
                        err::UPDATE,
                        err::UPDATE_MALFORMED_ATTRIBUTE_LIST,
                        Vec::new(),
                    ));
                }
                continue;
            }
            *slot = true;
            match decode_attribute(flags, code, value, whole, opts) {
                Ok(a) => attributes.push(a),
                Err(e) => match on_malformed(code) {
                    OnMalformed::DiscardAttribute => {}
                    OnMalformed::TreatAsWithdraw => {
                        treat_as_withdraw.get_or_insert(e.0);
                    }
                    OnMalformed::ResetSession => return Err(e),
                },
            }
        }

        merge_received_as4(&mut attributes, opts);
        let mut update = Update {
            withdrawn,
            attributes,
            nlri,
            treat_as_withdraw: None,
        };
        // RFC 7606 §3(d): a missing well-known attribute is treat-as-withdraw too.
        if treat_as_withdraw.is_none() {
            treat_as_withdraw = update.check_mandatory().err().map(|e| e.0);
        }
        if let Some(n) = treat_as_withdraw {
            update.make_withdrawal(n);
        }
        Ok(update)
    }

    /// RFC 7606 treat-as-withdraw: every prefix the UPDATE announced becomes a
    /// withdrawal, its attributes go (MP_UNREACH stays: it only withdraws).
    fn make_withdrawal(&mut self, why: Notification) {
        self.withdrawn.append(&mut self.nlri);
        let attributes = std::mem::take(&mut self.attributes);
        self.attributes = attributes
            .into_iter()
            .filter_map(|a| match a {
                Attribute::MpReach { family, nlri, .. } => Some(Attribute::MpUnreach {
                    family,
                    withdrawn: nlri,
                }),
                a @ Attribute::MpUnreach { .. } => Some(a),
                _ => None,
            })
            .collect();
        self.treat_as_withdraw = Some(why);
    }

    fn check_mandatory(&self) -> Result<(), DecodeError> {
        let has = |c: u8| self.attributes.iter().any(|a| a.code() == c);
        let mp_reach = has(MP_REACH);
        let mut required: &[u8] = &[];
        if !self.nlri.is_empty() {
            required = &[ORIGIN, AS_PATH, NEXT_HOP];
        } else if mp_reach {
            required = &[ORIGIN, AS_PATH];
        }
        for &c in required {
            if !has(c) {
                return Err(DecodeError::new(
                    err::UPDATE,
                    err::UPDATE_MISSING_WELL_KNOWN,
                    vec![c],
                ));
            }
        }
        Ok(())
    }

    pub(super) fn encode(&self, opts: CodecOptions, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let wl_at = out.len();
        out.extend_from_slice(&[0, 0]);
        encode_prefixes(&self.withdrawn, out);
        patch_len_u16(out, wl_at, "withdrawn routes")?;
        let al_at = out.len();
        out.extend_from_slice(&[0, 0]);
        for a in &self.attributes {
            a.encode(opts, out)?;
        }
        if !opts.four_octet_as && !self.attributes.iter().any(|a| a.code() == AS4_PATH) {
            let as4 = self.attributes.iter().find_map(|a| match a {
                Attribute::AsPath(segments) => as4_path_for(segments),
                _ => None,
            });
            if let Some(as4) = as4 {
                as4.encode(opts, out)?;
            }
        }
        if !opts.four_octet_as && !self.attributes.iter().any(|a| a.code() == AS4_AGGREGATOR) {
            let as4 = self.attributes.iter().find_map(|a| match a {
                Attribute::Aggregator { asn, address } => as4_aggregator_for(*asn, *address),
                _ => None,
            });
            if let Some(as4) = as4 {
                as4.encode(opts, out)?;
            }
        }
        patch_len_u16(out, al_at, "path attributes")?;
        encode_prefixes(&self.nlri, out);
        Ok(())
    }
}

fn decode_attribute(
    flags: u8,
    code: u8,
    value: &[u8],
    whole: Vec<u8>,
    opts: CodecOptions,
) -> Result<Attribute, DecodeError> {
    let well_known = matches!(
        code,
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE
    );
    let optional_non_transitive = matches!(code, MED | MP_REACH | MP_UNREACH);
    let flag_bits = flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE);
    if (well_known && flag_bits != FLAG_TRANSITIVE)
        || (optional_non_transitive && flag_bits != FLAG_OPTIONAL)
    {
        return Err(DecodeError::new(
            err::UPDATE,
            err::UPDATE_ATTRIBUTE_FLAGS,
            whole,
        ));
    }
    if flags & FLAG_OPTIONAL == 0 && !well_known {
        return Err(DecodeError::new(
            err::UPDATE,
            err::UPDATE_UNRECOGNIZED_WELL_KNOWN,
            whole,
        ));
    }
    let len_err =
        |w: &Vec<u8>| DecodeError::new(err::UPDATE, err::UPDATE_ATTRIBUTE_LENGTH, w.clone());
    let fixed = |n: usize| {
        if value.len() == n {
            Ok(())
        } else {
            Err(len_err(&whole))
        }
    };
    let u32_of = |v: &[u8]| {
        v.try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| len_err(&whole))
    };
    Ok(match code {
        ORIGIN => {
            fixed(1)?;
            match value.first() {
                Some(0) => Attribute::Origin(Origin::Igp),
                Some(1) => Attribute::Origin(Origin::Egp),
                Some(2) => Attribute::Origin(Origin::Incomplete),
                _ => {
                    return Err(DecodeError::new(
                        err::UPDATE,
                        err::UPDATE_INVALID_ORIGIN,
                        whole,
                    ));
                }
            }
        }
        AS_PATH => Attribute::AsPath(decode_as_path(value, opts)?),
        NEXT_HOP => {
            fixed(4)?;
            let nh = Ipv4Addr::from(u32_of(value)?);
            if nh.is_unspecified() || nh.is_broadcast() || nh.is_multicast() {
                return Err(DecodeError::new(
                    err::UPDATE,
                    err::UPDATE_INVALID_NEXT_HOP,
                    whole,
                ));
            }
            Attribute::NextHop(nh)
        }
        MED => {
            fixed(4)?;
            Attribute::Med(u32_of(value)?)
        }
        LOCAL_PREF => {
            fixed(4)?;
            Attribute::LocalPref(u32_of(value)?)
        }
        AGGREGATOR => {
            // RFC 7606 §7.7: 6 bytes from a 2-octet peer, 8 from a 4-octet one.
            let as_len = if opts.four_octet_as { 4 } else { 2 };
            fixed(as_len + 4)?;
            let (asn, addr) = value
                .split_at_checked(as_len)
                .ok_or_else(|| len_err(&whole))?;
            let asn = if opts.four_octet_as {
                u32_of(asn)?
            } else {
                asn.iter().fold(0u32, |a, b| a << 8 | u32::from(*b))
            };
            Attribute::Aggregator {
                asn,
                address: Ipv4Addr::from(u32_of(addr)?),
            }
        }
        MP_REACH | MP_UNREACH => decode_mp(code, flags, value, whole)?,
        _ => Attribute::Other {
            flags: flags & !FLAG_EXTENDED,
            code,
            value: value.to_vec(),
        },
    })
}

fn decode_mp(code: u8, flags: u8, value: &[u8], whole: Vec<u8>) -> Result<Attribute, DecodeError> {
    let opt_err = (err::UPDATE, err::UPDATE_OPTIONAL_ATTRIBUTE);
    let mut r = Reader::new(value, opt_err);
    let afi = Afi::from(r.u16()?);
    let safi = Safi::from(r.u8()?);
    let family = AfiSafi { afi, safi };
    if !matches!(afi, Afi::Ipv4 | Afi::Ipv6) || safi != Safi::Unicast {
        // A family we never negotiated: keep the bytes, interpret nothing.
        return Ok(Attribute::Other {
            flags: flags & !FLAG_EXTENDED,
            code,
            value: value.to_vec(),
        });
    }
    if code == MP_UNREACH {
        let withdrawn = decode_prefixes(r.rest(), afi, opt_err)?;
        return Ok(Attribute::MpUnreach { family, withdrawn });
    }
    let nh_len = usize::from(r.u8()?);
    let nh = r.bytes(nh_len)?;
    let next_hops = match (afi, nh_len) {
        (Afi::Ipv4, 4) => nh.try_into().map(|o: [u8; 4]| vec![IpAddr::from(o)]).ok(),
        (Afi::Ipv6, 16) => nh.try_into().map(|o: [u8; 16]| vec![IpAddr::from(o)]).ok(),
        (Afi::Ipv6, 32) => match (nh.get(..16), nh.get(16..)) {
            (Some(a), Some(b)) => match (<[u8; 16]>::try_from(a), <[u8; 16]>::try_from(b)) {
                (Ok(a), Ok(b)) => Some(vec![IpAddr::from(a), IpAddr::from(b)]),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    let Some(next_hops) = next_hops else {
        return Err(DecodeError::new(opt_err.0, opt_err.1, whole));
    };
    let _reserved = r.u8()?;
    let nlri = decode_prefixes(r.rest(), afi, opt_err)?;
    Ok(Attribute::MpReach {
        family,
        next_hops,
        nlri,
    })
}

fn decode_as_path(value: &[u8], opts: CodecOptions) -> Result<Vec<AsSegment>, DecodeError> {
    let mut r = Reader::new(value, (err::UPDATE, err::UPDATE_MALFORMED_AS_PATH));
    let mut segments = Vec::new();
    while !r.is_empty() {
        let ty = r.u8()?;
        let count = usize::from(r.u8()?);
        if count == 0 {
            return Err(r.short_err());
        }
        let mut asns = Vec::with_capacity(count);
        for _ in 0..count {
            asns.push(if opts.four_octet_as {
                r.u32()?
            } else {
                u32::from(r.u16()?)
            });
        }
        segments.push(match ty {
            1 => AsSegment::Set(asns),
            2 => AsSegment::Sequence(asns),
            3 => AsSegment::ConfedSequence(asns),
            4 => AsSegment::ConfedSet(asns),
            _ => return Err(r.short_err()),
        });
    }
    Ok(segments)
}
