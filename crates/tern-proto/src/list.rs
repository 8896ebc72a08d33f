//! A fixed-capacity list, so that messages can carry several modules without an allocator.

/// Up to `N` values of `T`, stored inline.
///
/// Decoding fills a list from the wire and fails with
/// [`DecodeError::TooMany`](crate::DecodeError::TooMany) instead of growing, so the size of
/// every message type is known at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct List<T, const N: usize> {
    items: [Option<T>; N],
    len: usize,
}

impl<T: Copy, const N: usize> Default for List<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy, const N: usize> List<T, N> {
    /// An empty list.
    pub const fn new() -> Self {
        List { items: [None; N], len: 0 }
    }

    /// Builds a list from a slice; `None` when the slice holds more than `N` values.
    pub fn from_slice(values: &[T]) -> Option<Self> {
        let mut list = Self::new();
        for value in values {
            list.push(*value).ok()?;
        }
        Some(list)
    }

    /// Appends `value`, or hands it back when the list is full.
    pub fn push(&mut self, value: T) -> Result<(), T> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(value);
                self.len += 1;
                Ok(())
            }
            None => Err(value),
        }
    }

    /// The number of values held.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the list holds no value.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&T> {
        self.items.get(index).and_then(Option::as_ref)
    }

    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        // Only `push` writes, in order, so exactly the first `len` slots are filled.
        self.items[..self.len].iter().flatten()
    }
}
