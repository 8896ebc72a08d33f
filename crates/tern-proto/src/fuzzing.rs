//! Entry points for the fuzz targets (`fuzz/fuzz_targets/proto*.rs`), kept here so that
//! `cargo test` replays the committed corpus through exactly the same code.

use crate::attempt::{Attempt, TransferConfig};
use crate::{List, Message, OfferedModule, Transfer};

/// The message decoder on arbitrary bytes: never panics; whatever decodes re-encodes to
/// bytes that decode to the same message (the codec agrees with itself).
pub fn decode(data: &[u8]) {
    let Ok(message) = Message::decode(data) else { return };
    let mut buf = [0u8; 4096];
    // Messages longer than the buffer (large blocks) are checked for length only.
    match message.encode(&mut buf) {
        Ok(len) => {
            assert_eq!(len, message.encoded_len());
            assert_eq!(Message::decode(&buf[..len]), Ok(message), "re-encoded message decodes differently");
        }
        Err(_) => assert!(message.encoded_len() > buf.len()),
    }
}

/// The server's attempt machine fed arbitrary device messages: never panics, never leaves
/// a final state, and never asks to send a block outside the offered modules.
pub fn attempt(data: &[u8]) {
    let modules = [
        OfferedModule {
            function: tern_image::ModuleFunction::SystemPart,
            index: 1,
            version: 2,
            size: 5000,
            sha256: [1; 32],
            transfer: Transfer::Patch { source: Some([3; 32]), length: 1500 },
        },
        OfferedModule {
            function: tern_image::ModuleFunction::UserPart,
            index: 1,
            version: 3,
            size: 1,
            sha256: [2; 32],
            transfer: Transfer::Raw,
        },
    ];
    let list: List<OfferedModule, { crate::MAX_MODULES }> = List::from_slice(&modules).expect("two fit");
    let mut attempt = Attempt::new(1, list, TransferConfig::default(), 0);
    // Each chunk is [time step, length, message bytes…].
    let mut rest = data;
    let mut now = 0u64;
    while let [step, len, tail @ ..] = rest {
        now += u64::from(*step) * 100;
        let len = usize::from(*len).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        let was_final = attempt.state().is_final();
        match Message::decode(chunk) {
            Ok(Message::BlockRequest(m)) => drop(attempt.handle_block_request(&m, now)),
            Ok(Message::Progress(m)) => drop(attempt.handle_progress(&m, now)),
            Ok(Message::Result(m)) => drop(attempt.handle_result(&m, now)),
            Ok(Message::Describe(m)) => drop(attempt.handle_describe(&m, now)),
            _ => attempt.handle_timeout(now),
        }
        if was_final {
            assert!(attempt.state().is_final(), "a final state was left");
        }
        while let Some(transmit) = attempt.poll_transmit() {
            if let crate::attempt::Transmit::Block { module, offset, length } = transmit {
                let size = modules[usize::from(module)].size;
                assert!(offset < size && length > 0 && offset + length <= size, "block outside the module");
            }
        }
        while attempt.poll_event().is_some() {}
    }
}
