//! Combined files: several complete modules back to back, each but the last with the
//! COMBINED flag (0x04). binary-version-reader's `combineModules` writes them and
//! `splitCombinedModules` reads them; this follows the reading rules of the latter.

use super::{parse, prefix, Error, Module, MIN_SUFFIX_SIZE, PREFIX_SIZE};

/// The modules of a combined file, in order, each with its offset in the file.
///
/// Each module spans `end − start + 4` bytes from where the previous one ended (its prefix
/// found as in a single file). A file without the COMBINED flag yields itself. After an
/// error the iterator ends.
#[derive(Clone, Debug)]
pub struct CombinedModules<'a> {
    bytes: &'a [u8],
    offset: usize,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A module is expected at `offset`.
    More,
    /// The previous module was the last one; check that it ended the file.
    CheckEnd,
    /// The previous module had the COMBINED flag but ended the file.
    MissingNext,
    /// Nothing more to yield.
    Done,
}

/// Splits a combined file into its modules.
pub fn split_combined(bytes: &[u8]) -> CombinedModules<'_> {
    CombinedModules { bytes, offset: 0, state: State::More }
}

impl<'a> Iterator for CombinedModules<'a> {
    type Item = Result<(usize, Module<'a>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let offset = self.offset;
        match core::mem::replace(&mut self.state, State::Done) {
            State::Done => None,
            State::CheckEnd => (offset < self.bytes.len()).then_some(Err(Error::CombinedEndMismatch { offset })),
            State::MissingNext => Some(Err(Error::CombinedEndMismatch { offset })),
            State::More => Some(self.next_module(offset)),
        }
    }
}

impl<'a> CombinedModules<'a> {
    fn next_module(&mut self, offset: usize) -> Result<(usize, Module<'a>), Error> {
        let rest = self.bytes.get(offset..).unwrap_or(&[]);
        if rest.len() < PREFIX_SIZE + MIN_SUFFIX_SIZE {
            return Err(Error::CombinedPartTruncated { offset });
        }
        let (prefix_offset, confidence) = prefix::locate(rest);
        let found = if confidence == 0 { None } else { prefix::Prefix::read(rest, prefix_offset) };
        let prefix = found.ok_or(Error::NoPrefix)?;
        let size = prefix.module_len().and_then(|len| usize::try_from(len).ok()).ok_or(Error::NoPrefix)?;
        let part = rest.get(..size).ok_or(Error::CombinedPartTruncated { offset })?;
        let module = parse(part)?;
        self.offset = offset + size;
        self.state = match (prefix.flags.combined(), self.offset < self.bytes.len()) {
            (true, true) => State::More,
            (true, false) => State::MissingNext,
            (false, _) => State::CheckEnd,
        };
        Ok((offset, module))
    }
}
