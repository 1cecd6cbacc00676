//! BGP-4 wire codec (RFC 4271) for the subset hybridway speaks.
//!
//! Decoding never panics: every length is checked with `get`, and every failure is a
//! [`DecodeError`] that carries the NOTIFICATION (error code, subcode, data) RFC 4271
//! §6 asks us to send. Encoding writes into a caller's `Vec<u8>`.
//!
//! A hand-written codec was chosen over `netgauze-bgp-pkt`: the subset is small, and
//! netgauze's dependency tree (nom, strum, serde on every type, ipnet, …) costs more
//! to build on our 2-core CI than this file does to read.

mod open;
mod update;

pub use open::{Afi, AfiSafi, Capability, GrFamily, GracefulRestart, Open, Safi};
pub use update::{AsSegment, Attribute, Origin, Update, prefix_wire_len};

use std::fmt;

/// Fixed header: 16-byte marker, 2-byte length, 1-byte type.
pub const HEADER_LEN: usize = 19;
/// RFC 4271 §4: the largest message without the extended-message capability.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The AS number sent in the 2-byte field when ours does not fit (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// Options that change how bytes are read or written, fixed per session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecOptions {
    /// Both sides announced 4-octet AS numbers: AS_PATH carries 4-byte ASNs.
    pub four_octet_as: bool,
}

impl Default for CodecOptions {
    fn default() -> Self {
        CodecOptions {
            four_octet_as: true,
        }
    }
}

/// One BGP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

impl Message {
    pub fn kind(&self) -> MessageType {
        match self {
            Message::Open(_) => MessageType::Open,
            Message::Update(_) => MessageType::Update,
            Message::Notification(_) => MessageType::Notification,
            Message::Keepalive => MessageType::Keepalive,
            Message::RouteRefresh(_) => MessageType::RouteRefresh,
        }
    }
}

/// Message type codes (RFC 4271 §4.1, RFC 2918 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Open,
    Update,
    Notification,
    Keepalive,
    RouteRefresh,
}

impl MessageType {
    pub fn code(self) -> u8 {
        match self {
            MessageType::Open => 1,
            MessageType::Update => 2,
            MessageType::Notification => 3,
            MessageType::Keepalive => 4,
            MessageType::RouteRefresh => 5,
        }
    }
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => MessageType::Open,
            2 => MessageType::Update,
            3 => MessageType::Notification,
            4 => MessageType::Keepalive,
            5 => MessageType::RouteRefresh,
            _ => return None,
        })
    }
}

/// A NOTIFICATION message (RFC 4271 §4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

/// NOTIFICATION error codes and subcodes (RFC 4271 §4.5, §6; RFC 4486 for Cease).
pub mod err {
    pub const HEADER: u8 = 1;
    pub const HEADER_NOT_SYNCHRONIZED: u8 = 1;
    pub const HEADER_BAD_LENGTH: u8 = 2;
    pub const HEADER_BAD_TYPE: u8 = 3;

    pub const OPEN: u8 = 2;
    pub const OPEN_UNSPECIFIC: u8 = 0;
    pub const OPEN_UNSUPPORTED_VERSION: u8 = 1;
    pub const OPEN_BAD_PEER_AS: u8 = 2;
    pub const OPEN_BAD_BGP_ID: u8 = 3;
    pub const OPEN_UNSUPPORTED_PARAMETER: u8 = 4;
    pub const OPEN_UNACCEPTABLE_HOLD_TIME: u8 = 6;
    /// RFC 5492 §5.
    pub const OPEN_UNSUPPORTED_CAPABILITY: u8 = 7;

    pub const UPDATE: u8 = 3;
    pub const UPDATE_MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UPDATE_UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    pub const UPDATE_MISSING_WELL_KNOWN: u8 = 3;
    pub const UPDATE_ATTRIBUTE_FLAGS: u8 = 4;
    pub const UPDATE_ATTRIBUTE_LENGTH: u8 = 5;
    pub const UPDATE_INVALID_ORIGIN: u8 = 6;
    pub const UPDATE_INVALID_NEXT_HOP: u8 = 8;
    pub const UPDATE_OPTIONAL_ATTRIBUTE: u8 = 9;
    pub const UPDATE_INVALID_NETWORK: u8 = 10;
    pub const UPDATE_MALFORMED_AS_PATH: u8 = 11;

    pub const HOLD_TIMER_EXPIRED: u8 = 4;

    pub const FSM: u8 = 5;
    /// RFC 6608 subcodes: unexpected message in OpenSent / OpenConfirm / Established.
    pub const FSM_UNEXPECTED_IN_OPEN_SENT: u8 = 1;
    pub const FSM_UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
    pub const FSM_UNEXPECTED_IN_ESTABLISHED: u8 = 3;

    pub const CEASE: u8 = 6;
    pub const CEASE_ADMIN_SHUTDOWN: u8 = 2;
    pub const CEASE_PEER_DECONFIGURED: u8 = 3;
    pub const CEASE_ADMIN_RESET: u8 = 4;
    pub const CEASE_COLLISION: u8 = 7;

    /// RFC 7313 §5: ROUTE-REFRESH message error.
    pub const ROUTE_REFRESH: u8 = 7;
    pub const ROUTE_REFRESH_BAD_LENGTH: u8 = 1;
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Self {
        Notification {
            code,
            subcode,
            data,
        }
    }

    /// A human name for the code/subcode pair, for status and logs.
    pub fn describe(&self) -> String {
        let code = match self.code {
            err::HEADER => "message header error",
            err::OPEN => "OPEN message error",
            err::UPDATE => "UPDATE message error",
            err::HOLD_TIMER_EXPIRED => "hold timer expired",
            err::FSM => "finite state machine error",
            err::CEASE => "cease",
            err::ROUTE_REFRESH => "ROUTE-REFRESH message error",
            _ => "unknown error",
        };
        format!("{code} ({}/{})", self.code, self.subcode)
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A ROUTE-REFRESH message (RFC 2918): "please send me family X again".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRefresh {
    pub family: AfiSafi,
}

/// Bytes that are not a valid message, with the NOTIFICATION that reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid BGP message: {0}")]
pub struct DecodeError(pub Notification);

impl DecodeError {
    pub(crate) fn new(code: u8, subcode: u8, data: Vec<u8>) -> Self {
        DecodeError(Notification::new(code, subcode, data))
    }
    pub fn notification(&self) -> &Notification {
        &self.0
    }
}

/// A message that cannot be written (it would exceed 4096 bytes, or a field overflows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message of {0} bytes exceeds the 4096-byte BGP maximum")]
    TooLong(usize),
    #[error("field {0} is too long for its length octet(s)")]
    FieldTooLong(&'static str),
}

/// A bounds-checked reader over message bytes. Running past the end yields the
/// NOTIFICATION given by the caller, so each message type reports its own error.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    short: (u8, u8),
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], short: (u8, u8)) -> Self {
        Reader { buf, short }
    }
    pub(crate) fn short_err(&self) -> DecodeError {
        DecodeError::new(self.short.0, self.short.1, Vec::new())
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        match (self.buf.get(..n), self.buf.get(n..)) {
            (Some(head), Some(tail)) => {
                self.buf = tail;
                Ok(head)
            }
            _ => Err(self.short_err()),
        }
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = self.bytes(1)?;
        b.first().copied().ok_or_else(|| self.short_err())
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        let arr: [u8; 2] = b.try_into().map_err(|_| self.short_err())?;
        Ok(u16::from_be_bytes(arr))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        let arr: [u8; 4] = b.try_into().map_err(|_| self.short_err())?;
        Ok(u32::from_be_bytes(arr))
    }
}

/// If `buf` starts with a complete message, its total length. `Ok(None)` means "read
/// more"; an invalid header is an error right away (the stream cannot resync).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let (len, _) = check_header(header)?;
    Ok((buf.len() >= len).then_some(len))
}

fn check_header(header: &[u8]) -> Result<(usize, u8), DecodeError> {
    let mut r = Reader::new(header, (err::HEADER, err::HEADER_BAD_LENGTH));
    let marker = r.bytes(16)?;
    if marker.iter().any(|&b| b != 0xff) {
        return Err(DecodeError::new(
            err::HEADER,
            err::HEADER_NOT_SYNCHRONIZED,
            Vec::new(),
        ));
    }
    let len = r.u16()?;
    let ty = r.u8()?;
    let bad_len = || {
        DecodeError::new(
            err::HEADER,
            err::HEADER_BAD_LENGTH,
            len.to_be_bytes().to_vec(),
        )
    };
    let len_usize = usize::from(len);
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len_usize) {
        return Err(bad_len());
    }
    let Some(kind) = MessageType::from_code(ty) else {
        return Err(DecodeError::new(
            err::HEADER,
            err::HEADER_BAD_TYPE,
            vec![ty],
        ));
    };
    // RFC 4271 §6.1: per-type minimum (and for KEEPALIVE exact) lengths.
    let ok = match kind {
        MessageType::Open => len_usize >= 29,
        MessageType::Update => len_usize >= 23,
        MessageType::Notification => len_usize >= 21,
        MessageType::Keepalive => len_usize == HEADER_LEN,
        // RFC 7313 §5 makes a bad ROUTE-REFRESH length its own error, but the
        // header-level check is what RFC 2918 peers expect.
        MessageType::RouteRefresh => len_usize == 23,
    };
    if !ok {
        return Err(bad_len());
    }
    Ok((len_usize, ty))
}

/// Decode exactly one message from `buf` (header included). Trailing bytes beyond
/// the header's length are an error: callers split the stream with [`frame_len`].
pub fn decode(buf: &[u8], opts: CodecOptions) -> Result<Message, DecodeError> {
    let header = buf
        .get(..HEADER_LEN)
        .ok_or_else(|| DecodeError::new(err::HEADER, err::HEADER_BAD_LENGTH, Vec::new()))?;
    let (len, ty) = check_header(header)?;
    if buf.len() != len {
        return Err(DecodeError::new(
            err::HEADER,
            err::HEADER_BAD_LENGTH,
            (len as u16).to_be_bytes().to_vec(),
        ));
    }
    let body = buf.get(HEADER_LEN..).unwrap_or_default();
    match MessageType::from_code(ty) {
        Some(MessageType::Open) => Open::decode(body).map(Message::Open),
        Some(MessageType::Update) => Update::decode(body, opts).map(Message::Update),
        Some(MessageType::Notification) => {
            let mut r = Reader::new(body, (err::HEADER, err::HEADER_BAD_LENGTH));
            let code = r.u8()?;
            let subcode = r.u8()?;
            Ok(Message::Notification(Notification::new(
                code,
                subcode,
                r.rest().to_vec(),
            )))
        }
        Some(MessageType::Keepalive) => Ok(Message::Keepalive),
        Some(MessageType::RouteRefresh) => {
            let mut r = Reader::new(body, (err::HEADER, err::HEADER_BAD_LENGTH));
            let afi = r.u16()?;
            let _reserved = r.u8()?;
            let safi = r.u8()?;
            Ok(Message::RouteRefresh(RouteRefresh {
                family: AfiSafi {
                    afi: Afi::from(afi),
                    safi: Safi::from(safi),
                },
            }))
        }
        None => Err(DecodeError::new(
            err::HEADER,
            err::HEADER_BAD_TYPE,
            vec![ty],
        )),
    }
}

/// Append one encoded message to `out`.
pub fn encode(msg: &Message, opts: CodecOptions, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0]);
    out.push(msg.kind().code());
    let body = match msg {
        Message::Open(open) => open.encode(out),
        Message::Update(update) => update.encode(opts, out),
        Message::Notification(n) => {
            out.push(n.code);
            out.push(n.subcode);
            out.extend_from_slice(&n.data);
            Ok(())
        }
        Message::Keepalive => Ok(()),
        Message::RouteRefresh(rr) => {
            out.extend_from_slice(&u16::from(rr.family.afi).to_be_bytes());
            out.push(0);
            out.push(u8::from(rr.family.safi));
            Ok(())
        }
    };
    if let Err(e) = body {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start;
    if len > MAX_MESSAGE_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLong(len));
    }
    if let Some(field) = out.get_mut(start + 16..start + 18) {
        field.copy_from_slice(&(len as u16).to_be_bytes());
    }
    Ok(())
}

/// Convenience: encode one message into a fresh buffer.
pub fn encode_to_vec(msg: &Message, opts: CodecOptions) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    encode(msg, opts, &mut out)?;
    Ok(out)
}

/// Patch a 1-byte length written at `at` with the number of bytes after it.
pub(crate) fn patch_len_u8(
    out: &mut [u8],
    at: usize,
    field: &'static str,
) -> Result<(), EncodeError> {
    let n = out.len().saturating_sub(at + 1);
    let n = u8::try_from(n).map_err(|_| EncodeError::FieldTooLong(field))?;
    if let Some(b) = out.get_mut(at) {
        *b = n;
    }
    Ok(())
}

/// Patch a 2-byte length written at `at` with the number of bytes after it.
pub(crate) fn patch_len_u16(
    out: &mut [u8],
    at: usize,
    field: &'static str,
) -> Result<(), EncodeError> {
    let n = out.len().saturating_sub(at + 2);
    let n = u16::try_from(n).map_err(|_| EncodeError::FieldTooLong(field))?;
    if let Some(b) = out.get_mut(at..at + 2) {
        b.copy_from_slice(&n.to_be_bytes());
    }
    Ok(())
}
