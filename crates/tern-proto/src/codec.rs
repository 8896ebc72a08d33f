//! CBOR encoding and decoding of [`Message`]s.
//!
//! Every message is a CBOR array of three items (RFC 8949):
//!
//! | position | type | meaning |
//! |---|---|---|
//! | 0 | uint | protocol version, [`PROTOCOL_VERSION`] |
//! | 1 | uint | message kind, [`MessageKind::code`] |
//! | 2 | map  | the body: uint keys → values, per message (see `docs/protocol.md`) |
//!
//! The encoder is deterministic (RFC 8949 §4.2.1 "core deterministic encoding"): shortest
//! integer forms, definite lengths only, map keys in ascending order, optional fields left
//! out rather than encoded as null. The decoder accepts only definite lengths and strictly
//! ascending keys (so a field can never appear twice), skips keys it does not know (a newer
//! peer may add fields within the same protocol version), and never panics: every failure
//! is a [`DecodeError`].

use minicbor::decode::Decoder;
use minicbor::encode::write::Cursor;
use minicbor::encode::{Encoder, Write};
use tern_image::{Dependency, Integrity, ModuleFunction};

use crate::list::List;
use crate::message::*;

/// The protocol version this crate speaks, carried in every message.
pub const PROTOCOL_VERSION: u16 = 1;

/// Why bytes could not be decoded as a [`Message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not CBOR of the expected shape; names what was being read.
    Malformed(&'static str),
    /// The message is for a protocol version this crate does not speak.
    UnsupportedVersion(u64),
    /// The message kind code is not one this version defines.
    UnknownKind(u64),
    /// A required field is missing; names it.
    Missing(&'static str),
    /// A value does not fit its field (for example a hash that is not 32 bytes); names it.
    OutOfRange(&'static str),
    /// A list holds more entries than this crate accepts; names it.
    TooMany(&'static str),
    /// Map keys are not in strictly ascending order (a key repeated, or out of order).
    NonCanonical,
    /// An array or map of indefinite length, which this protocol does not use.
    IndefiniteLength,
    /// Bytes follow the end of the message.
    TrailingBytes,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Malformed(what) => write!(f, "malformed CBOR in {what}"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            DecodeError::Missing(what) => write!(f, "missing field {what}"),
            DecodeError::OutOfRange(what) => write!(f, "value out of range for {what}"),
            DecodeError::TooMany(what) => write!(f, "too many entries in {what}"),
            DecodeError::NonCanonical => f.write_str("map keys not in ascending order"),
            DecodeError::IndefiniteLength => f.write_str("indefinite-length array or map"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes after the message"),
        }
    }
}

/// Why a [`Message`] could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small; [`Message::encoded_len`] tells the size needed.
    BufferTooSmall,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("output buffer too small for the message")
    }
}

impl<'a> Message<'a> {
    /// Decodes one message that fills `bytes` exactly.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes);
        if definite_array(&mut d, "envelope")? != 3 {
            return Err(DecodeError::Malformed("envelope"));
        }
        let version = d.u64().map_err(malformed("version"))?;
        if version != u64::from(PROTOCOL_VERSION) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let code = d.u64().map_err(malformed("kind"))?;
        let kind = MessageKind::from_code(code).ok_or(DecodeError::UnknownKind(code))?;
        let message = match kind {
            MessageKind::Describe => Message::Describe(decode_describe(&mut d)?),
            MessageKind::UpdateOffer => Message::UpdateOffer(decode_offer(&mut d)?),
            MessageKind::BlockRequest => Message::BlockRequest(decode_block_request(&mut d)?),
            MessageKind::Block => Message::Block(decode_block(&mut d)?),
            MessageKind::Progress => Message::Progress(decode_progress(&mut d)?),
            MessageKind::Result => Message::Result(decode_result(&mut d)?),
            MessageKind::Command => Message::Command(decode_command(&mut d)?),
        };
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(message)
    }

    /// Encodes the message into the front of `buf`; returns the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut e = Encoder::new(Cursor::new(buf));
        self.write(&mut e).map_err(|_| EncodeError::BufferTooSmall)?;
        Ok(e.into_writer().position())
    }

    /// The exact number of bytes [`Message::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let mut e = Encoder::new(Counter(0));
        // Counting cannot fail: `Counter` accepts every write.
        let _ = self.write(&mut e);
        e.into_writer().0
    }

    fn write<W: Write>(&self, e: &mut Encoder<W>) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.array(3)?.u16(PROTOCOL_VERSION)?.u8(self.kind().code())?;
        match self {
            Message::Describe(m) => write_describe(e, m),
            Message::UpdateOffer(m) => write_offer(e, m),
            Message::BlockRequest(m) => {
                e.map(4)?.u8(0)?.u64(m.attempt)?.u8(1)?.u8(m.module)?.u8(2)?.u32(m.offset)?.u8(3)?.u32(m.length)?;
                Ok(())
            }
            Message::Block(m) => {
                e.map(4)?.u8(0)?.u64(m.attempt)?.u8(1)?.u8(m.module)?.u8(2)?.u32(m.offset)?.u8(3)?.bytes(m.data)?;
                Ok(())
            }
            Message::Progress(m) => {
                e.map(4)?.u8(0)?.u64(m.attempt)?.u8(1)?.u8(m.phase.code())?;
                e.u8(2)?.u64(m.bytes_done)?.u8(3)?.u64(m.bytes_total)?;
                Ok(())
            }
            Message::Result(m) => write_result(e, m),
            Message::Command(m) => {
                e.map(2 + u64::from(m.attempt.is_some()))?.u8(0)?.u32(m.id)?.u8(1)?.u8(m.action.code())?;
                if let Some(attempt) = m.attempt {
                    e.u8(2)?.u64(attempt)?;
                }
                Ok(())
            }
        }
    }
}

/// A writer that only counts bytes, for [`Message::encoded_len`].
struct Counter(usize);

impl Write for Counter {
    type Error = core::convert::Infallible;

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.0 += buf.len();
        Ok(())
    }
}

type EncodeResult<W> = Result<(), minicbor::encode::Error<<W as Write>::Error>>;

fn integrity_code(integrity: Integrity) -> u8 {
    match integrity {
        Integrity::Valid => 0,
        Integrity::Invalid => 1,
        Integrity::Unchecked => 2,
    }
}

fn write_describe<W: Write>(e: &mut Encoder<W>, m: &Describe) -> EncodeResult<W> {
    let fields = 4
        + u64::from(m.safe_mode.is_some())
        + u64::from(m.unmet.is_some())
        + u64::from(m.last_result.is_some())
        + u64::from(m.capacity.is_some())
        + u64::from(m.security_counter.is_some());
    e.map(fields)?.u8(0)?.u16(m.platform)?.u8(1)?.u8(m.boot_reason.code())?;
    if let Some(cause) = m.safe_mode {
        e.u8(2)?.u8(cause.code())?;
    }
    if let Some(dep) = m.unmet {
        e.u8(3)?.array(3)?.u8(dep.function.code())?.u8(dep.index)?.u32(dep.version)?;
    }
    e.u8(4)?.bool(m.confirmed)?;
    e.u8(5)?.array(m.modules.len() as u64)?;
    for module in m.modules.iter() {
        e.map(7)?.u8(0)?.u8(module.function.code())?.u8(1)?.u8(module.index)?.u8(2)?.u32(module.version)?;
        e.u8(3)?.bytes(&module.sha256)?.u8(4)?.u32(module.size)?;
        e.u8(5)?.u8(integrity_code(module.integrity))?.u8(6)?.bool(module.dependencies_met)?;
    }
    if let Some(result) = &m.last_result {
        e.u8(6)?;
        write_result(e, result)?;
    }
    if let Some(c) = &m.capacity {
        // Elements after the third are written only as far as they say something: the
        // fourth (patches) when it is true or the link elements follow.
        let len = match c.link {
            Some(_) => 6,
            None => 3 + u64::from(c.patches),
        };
        e.u8(7)?.array(len)?.u32(c.staging_bytes)?.u8(c.max_modules)?.u32(c.block_size)?;
        if len > 3 {
            e.bool(c.patches)?;
        }
        if let Some(link) = c.link {
            e.u32(link.max_block)?.bool(link.compact_topics)?;
        }
    }
    if let Some(counter) = m.security_counter {
        e.u8(8)?.u64(counter)?;
    }
    Ok(())
}

fn write_offer<W: Write>(e: &mut Encoder<W>, m: &UpdateOffer<'_>) -> EncodeResult<W> {
    e.map(6 + u64::from(m.max_request.is_some()))?.u8(0)?.u64(m.attempt)?.u8(1)?.array(m.signed.len() as u64)?;
    for document in m.signed.iter() {
        e.bytes(document)?;
    }
    e.u8(2)?.array(m.modules.len() as u64)?;
    for module in m.modules.iter() {
        let patch = matches!(module.transfer, Transfer::Patch { .. });
        e.map(5 + u64::from(patch))?.u8(0)?.u8(module.function.code())?.u8(1)?.u8(module.index)?;
        e.u8(2)?.u32(module.version)?.u8(3)?.u32(module.size)?.u8(4)?.bytes(&module.sha256)?;
        if let Transfer::Patch { source, length } = module.transfer {
            e.u8(5)?.array(2)?.u32(length)?;
            match source {
                Some(hash) => e.bytes(&hash)?,
                None => e.null()?,
            };
        }
    }
    e.u8(3)?.u64(m.air_bytes)?.u8(4)?.u8(m.window)?.u8(5)?.u32(m.max_block)?;
    if let Some(max_request) = m.max_request {
        e.u8(6)?.u32(max_request)?;
    }
    Ok(())
}

fn write_result<W: Write>(e: &mut Encoder<W>, m: &UpdateResult) -> EncodeResult<W> {
    e.map(3 + u64::from(m.module.is_some()))?.u8(0)?.u64(m.attempt)?.u8(1)?.u8(m.outcome.code())?;
    e.u8(2)?.u16(m.reason.code())?;
    if let Some(module) = m.module {
        e.u8(3)?.u8(module)?;
    }
    Ok(())
}

fn malformed(what: &'static str) -> impl Fn(minicbor::decode::Error) -> DecodeError {
    move |_| DecodeError::Malformed(what)
}

fn definite_array(d: &mut Decoder<'_>, what: &'static str) -> Result<u64, DecodeError> {
    d.array().map_err(malformed(what))?.ok_or(DecodeError::IndefiniteLength)
}

/// Reads a definite map with uint keys in strictly ascending order, handing each value to
/// `field`, which returns `false` for keys it does not know (their values are skipped).
fn read_map<'b>(
    d: &mut Decoder<'b>,
    what: &'static str,
    mut field: impl FnMut(u64, &mut Decoder<'b>) -> Result<bool, DecodeError>,
) -> Result<(), DecodeError> {
    let entries = d.map().map_err(malformed(what))?.ok_or(DecodeError::IndefiniteLength)?;
    let mut last: Option<u64> = None;
    for _ in 0..entries {
        let key = d.u64().map_err(malformed(what))?;
        if last.is_some_and(|last| key <= last) {
            return Err(DecodeError::NonCanonical);
        }
        last = Some(key);
        if !field(key, d)? {
            d.skip().map_err(malformed(what))?;
        }
    }
    Ok(())
}

fn sha256(d: &mut Decoder<'_>, what: &'static str) -> Result<Sha256, DecodeError> {
    d.bytes().map_err(malformed(what))?.try_into().map_err(|_| DecodeError::OutOfRange(what))
}

fn integrity(code: u8) -> Result<Integrity, DecodeError> {
    match code {
        0 => Ok(Integrity::Valid),
        1 => Ok(Integrity::Invalid),
        2 => Ok(Integrity::Unchecked),
        _ => Err(DecodeError::OutOfRange("integrity")),
    }
}

fn decode_describe(d: &mut Decoder<'_>) -> Result<Describe, DecodeError> {
    let (mut platform, mut boot_reason, mut safe_mode, mut unmet, mut confirmed, mut modules, mut last_result) =
        (None, None, None, None, None, None, None);
    let (mut capacity, mut security_counter) = (None, None);
    read_map(d, "describe", |key, d| {
        match key {
            0 => platform = Some(d.u16().map_err(malformed("platform"))?),
            1 => boot_reason = Some(BootReason::from_code(d.u8().map_err(malformed("boot reason"))?)),
            2 => safe_mode = Some(SafeModeCause::from_code(d.u8().map_err(malformed("safe mode cause"))?)),
            3 => {
                if definite_array(d, "unmet dependency")? != 3 {
                    return Err(DecodeError::Malformed("unmet dependency"));
                }
                unmet = Some(Dependency {
                    function: ModuleFunction::from_code(d.u8().map_err(malformed("unmet dependency"))?),
                    index: d.u8().map_err(malformed("unmet dependency"))?,
                    version: d.u32().map_err(malformed("unmet dependency"))?,
                });
            }
            4 => confirmed = Some(d.bool().map_err(malformed("confirmed"))?),
            5 => modules = Some(decode_installed(d)?),
            6 => last_result = Some(decode_result(d)?),
            7 => capacity = Some(decode_capacity(d)?),
            8 => security_counter = Some(d.u64().map_err(malformed("security counter"))?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Describe {
        platform: platform.ok_or(DecodeError::Missing("platform"))?,
        boot_reason: boot_reason.ok_or(DecodeError::Missing("boot reason"))?,
        safe_mode,
        unmet,
        confirmed: confirmed.ok_or(DecodeError::Missing("confirmed"))?,
        modules: modules.ok_or(DecodeError::Missing("modules"))?,
        last_result,
        capacity,
        security_counter,
    })
}

/// `[staging_bytes, max_modules, block_size, patches?, max_block, compact_topics]`: the
/// fourth element came later, the fifth and sixth (the link) later still and travel
/// together; elements after the sixth, from a newer device, are skipped.
fn decode_capacity(d: &mut Decoder<'_>) -> Result<Capacity, DecodeError> {
    let len = definite_array(d, "capacity")?;
    if len < 3 || len == 5 {
        return Err(DecodeError::Malformed("capacity"));
    }
    let mut capacity = Capacity {
        staging_bytes: d.u32().map_err(malformed("capacity"))?,
        max_modules: d.u8().map_err(malformed("capacity"))?,
        block_size: d.u32().map_err(malformed("capacity"))?,
        patches: len >= 4 && d.bool().map_err(malformed("capacity"))?,
        link: None,
    };
    if len >= 6 {
        capacity.link = Some(LinkCapacity {
            max_block: d.u32().map_err(malformed("capacity"))?,
            compact_topics: d.bool().map_err(malformed("capacity"))?,
        });
    }
    for _ in 6..len {
        d.skip().map_err(malformed("capacity"))?;
    }
    Ok(capacity)
}

fn decode_installed(d: &mut Decoder<'_>) -> Result<List<InstalledModule, MAX_MODULES>, DecodeError> {
    let count = definite_array(d, "modules")?;
    let mut list = List::new();
    for _ in 0..count {
        let (mut function, mut index, mut version, mut hash, mut size, mut integ, mut deps) =
            (None, None, None, None, None, None, None);
        read_map(d, "module", |key, d| {
            match key {
                0 => function = Some(ModuleFunction::from_code(d.u8().map_err(malformed("module function"))?)),
                1 => index = Some(d.u8().map_err(malformed("module index"))?),
                2 => version = Some(d.u32().map_err(malformed("module version"))?),
                3 => hash = Some(sha256(d, "module sha256")?),
                4 => size = Some(d.u32().map_err(malformed("module size"))?),
                5 => integ = Some(integrity(d.u8().map_err(malformed("integrity"))?)?),
                6 => deps = Some(d.bool().map_err(malformed("dependencies met"))?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let module = InstalledModule {
            function: function.ok_or(DecodeError::Missing("module function"))?,
            index: index.ok_or(DecodeError::Missing("module index"))?,
            version: version.ok_or(DecodeError::Missing("module version"))?,
            sha256: hash.ok_or(DecodeError::Missing("module sha256"))?,
            size: size.ok_or(DecodeError::Missing("module size"))?,
            integrity: integ.ok_or(DecodeError::Missing("integrity"))?,
            dependencies_met: deps.ok_or(DecodeError::Missing("dependencies met"))?,
        };
        list.push(module).map_err(|_| DecodeError::TooMany("modules"))?;
    }
    Ok(list)
}

fn decode_offer<'b>(d: &mut Decoder<'b>) -> Result<UpdateOffer<'b>, DecodeError> {
    let (mut attempt, mut signed, mut modules, mut air_bytes, mut window, mut max_block) =
        (None, None, None, None, None, None);
    let mut max_request = None;
    read_map(d, "offer", |key, d| {
        match key {
            0 => attempt = Some(d.u64().map_err(malformed("attempt"))?),
            1 => signed = Some(decode_documents(d)?),
            2 => modules = Some(decode_offered(d)?),
            3 => air_bytes = Some(d.u64().map_err(malformed("air bytes"))?),
            4 => window = Some(d.u8().map_err(malformed("window"))?),
            5 => max_block = Some(d.u32().map_err(malformed("max block"))?),
            6 => max_request = Some(d.u32().map_err(malformed("max request"))?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(UpdateOffer {
        attempt: attempt.ok_or(DecodeError::Missing("attempt"))?,
        signed: signed.ok_or(DecodeError::Missing("signed"))?,
        modules: modules.ok_or(DecodeError::Missing("modules"))?,
        air_bytes: air_bytes.ok_or(DecodeError::Missing("air bytes"))?,
        window: window.ok_or(DecodeError::Missing("window"))?,
        max_block: max_block.ok_or(DecodeError::Missing("max block"))?,
        max_request,
    })
}

fn decode_documents<'b>(d: &mut Decoder<'b>) -> Result<List<&'b [u8], MAX_MODULES>, DecodeError> {
    let count = definite_array(d, "signed")?;
    let mut list = List::new();
    for _ in 0..count {
        let document = d.bytes().map_err(malformed("signed"))?;
        list.push(document).map_err(|_| DecodeError::TooMany("signed"))?;
    }
    if list.is_empty() {
        return Err(DecodeError::Malformed("signed"));
    }
    Ok(list)
}

fn decode_offered(d: &mut Decoder<'_>) -> Result<List<OfferedModule, MAX_MODULES>, DecodeError> {
    let count = definite_array(d, "modules")?;
    let mut list = List::new();
    for _ in 0..count {
        let (mut function, mut index, mut version, mut size, mut hash) = (None, None, None, None, None);
        let mut transfer = Transfer::Raw;
        read_map(d, "module", |key, d| {
            match key {
                0 => function = Some(ModuleFunction::from_code(d.u8().map_err(malformed("module function"))?)),
                1 => index = Some(d.u8().map_err(malformed("module index"))?),
                2 => version = Some(d.u32().map_err(malformed("module version"))?),
                3 => size = Some(d.u32().map_err(malformed("module size"))?),
                4 => hash = Some(sha256(d, "module sha256")?),
                5 => transfer = decode_transfer(d)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let module = OfferedModule {
            function: function.ok_or(DecodeError::Missing("module function"))?,
            index: index.ok_or(DecodeError::Missing("module index"))?,
            version: version.ok_or(DecodeError::Missing("module version"))?,
            size: size.ok_or(DecodeError::Missing("module size"))?,
            sha256: hash.ok_or(DecodeError::Missing("module sha256"))?,
            transfer,
        };
        list.push(module).map_err(|_| DecodeError::TooMany("modules"))?;
    }
    Ok(list)
}

/// An offered module's transfer: `[patch length, source SHA-256 or null]`.
fn decode_transfer(d: &mut Decoder<'_>) -> Result<Transfer, DecodeError> {
    if definite_array(d, "transfer")? != 2 {
        return Err(DecodeError::Malformed("transfer"));
    }
    let length = d.u32().map_err(malformed("transfer length"))?;
    let source = if d.datatype().map_err(malformed("transfer source"))? == minicbor::data::Type::Null {
        d.skip().map_err(malformed("transfer source"))?;
        None
    } else {
        Some(sha256(d, "transfer source")?)
    };
    Ok(Transfer::Patch { source, length })
}

fn decode_block_request(d: &mut Decoder<'_>) -> Result<BlockRequest, DecodeError> {
    let (mut attempt, mut module, mut offset, mut length) = (None, None, None, None);
    read_map(d, "block request", |key, d| {
        match key {
            0 => attempt = Some(d.u64().map_err(malformed("attempt"))?),
            1 => module = Some(d.u8().map_err(malformed("module"))?),
            2 => offset = Some(d.u32().map_err(malformed("offset"))?),
            3 => length = Some(d.u32().map_err(malformed("length"))?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(BlockRequest {
        attempt: attempt.ok_or(DecodeError::Missing("attempt"))?,
        module: module.ok_or(DecodeError::Missing("module"))?,
        offset: offset.ok_or(DecodeError::Missing("offset"))?,
        length: length.ok_or(DecodeError::Missing("length"))?,
    })
}

fn decode_block<'b>(d: &mut Decoder<'b>) -> Result<Block<'b>, DecodeError> {
    let (mut attempt, mut module, mut offset, mut data) = (None, None, None, None);
    read_map(d, "block", |key, d| {
        match key {
            0 => attempt = Some(d.u64().map_err(malformed("attempt"))?),
            1 => module = Some(d.u8().map_err(malformed("module"))?),
            2 => offset = Some(d.u32().map_err(malformed("offset"))?),
            3 => data = Some(d.bytes().map_err(malformed("data"))?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Block {
        attempt: attempt.ok_or(DecodeError::Missing("attempt"))?,
        module: module.ok_or(DecodeError::Missing("module"))?,
        offset: offset.ok_or(DecodeError::Missing("offset"))?,
        data: data.ok_or(DecodeError::Missing("data"))?,
    })
}

fn decode_progress(d: &mut Decoder<'_>) -> Result<Progress, DecodeError> {
    let (mut attempt, mut phase, mut done, mut total) = (None, None, None, None);
    read_map(d, "progress", |key, d| {
        match key {
            0 => attempt = Some(d.u64().map_err(malformed("attempt"))?),
            1 => phase = Some(Phase::from_code(d.u8().map_err(malformed("phase"))?)),
            2 => done = Some(d.u64().map_err(malformed("bytes done"))?),
            3 => total = Some(d.u64().map_err(malformed("bytes total"))?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Progress {
        attempt: attempt.ok_or(DecodeError::Missing("attempt"))?,
        phase: phase.ok_or(DecodeError::Missing("phase"))?,
        bytes_done: done.ok_or(DecodeError::Missing("bytes done"))?,
        bytes_total: total.ok_or(DecodeError::Missing("bytes total"))?,
    })
}

fn decode_result(d: &mut Decoder<'_>) -> Result<UpdateResult, DecodeError> {
    let (mut attempt, mut outcome, mut reason, mut module) = (None, None, None, None);
    read_map(d, "result", |key, d| {
        match key {
            0 => attempt = Some(d.u64().map_err(malformed("attempt"))?),
            1 => outcome = Some(Outcome::from_code(d.u8().map_err(malformed("outcome"))?)),
            2 => reason = Some(Reason::from_code(d.u16().map_err(malformed("reason"))?)),
            3 => module = Some(d.u8().map_err(malformed("module"))?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(UpdateResult {
        attempt: attempt.ok_or(DecodeError::Missing("attempt"))?,
        outcome: outcome.ok_or(DecodeError::Missing("outcome"))?,
        reason: reason.ok_or(DecodeError::Missing("reason"))?,
        module,
    })
}

fn decode_command(d: &mut Decoder<'_>) -> Result<Command, DecodeError> {
    let (mut id, mut action, mut attempt) = (None, None, None);
    read_map(d, "command", |key, d| {
        match key {
            0 => id = Some(d.u32().map_err(malformed("command id"))?),
            1 => action = Some(Action::from_code(d.u8().map_err(malformed("action"))?)),
            2 => attempt = Some(d.u64().map_err(malformed("attempt"))?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Command {
        id: id.ok_or(DecodeError::Missing("command id"))?,
        action: action.ok_or(DecodeError::Missing("action"))?,
        attempt,
    })
}
