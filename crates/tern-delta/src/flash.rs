//! The old image straight from flash: [`OldImage`] over any `embedded-storage`
//! [`ReadStorage`] (a NOR flash driver, or the device's own storage layer), starting at the
//! slot's offset.

use embedded_storage::ReadStorage;

use crate::model::OldImage;

/// The installed image in flash: `len` bytes from `base` of `flash`. Reads past `len`
/// are refused, so a patch for a longer image reads as a wrong source, never as the next
/// slot's bytes.
pub struct FlashImage<F> {
    /// The flash device.
    pub flash: F,
    /// Offset of the image's first byte in the device.
    pub base: u32,
    /// Length of the slot (or of the installed module).
    pub len: u32,
}

/// Why a read from a [`FlashImage`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashReadError<E> {
    /// Past the end of the slot.
    OutOfSlot,
    /// The driver's error.
    Flash(E),
}

impl<F: ReadStorage> OldImage for FlashImage<F> {
    type Error = FlashReadError<F::Error>;
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        let end = u64::from(offset) + buf.len() as u64;
        if end > u64::from(self.len) {
            return Err(FlashReadError::OutOfSlot);
        }
        self.flash.read(self.base + offset, buf).map_err(FlashReadError::Flash)
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::{make, Applier, ApplyError, Config, Status};

    /// RAM pretending to be flash, with the image at an offset inside it.
    struct Ram(Vec<u8>);
    impl ReadStorage for Ram {
        type Error = ();
        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), ()> {
            let at = offset as usize;
            bytes.copy_from_slice(self.0.get(at..at + bytes.len()).ok_or(())?);
            Ok(())
        }
        fn capacity(&self) -> usize {
            self.0.len()
        }
    }

    #[test]
    fn applies_from_an_image_inside_a_larger_flash() {
        let old: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new.splice(100..100, [1, 2, 3]);
        let patch = make(&old, &new, &Config { load_address: Some(0x1000), ..Config::default() });
        let mut flash = vec![0xEE; 512];
        flash.extend_from_slice(&old);
        flash.extend_from_slice(&[0xEE; 512]);

        let mut source = FlashImage { flash: Ram(flash.clone()), base: 512, len: old.len() as u32 };
        let mut out = Vec::new();
        let mut a = Applier::new();
        assert_eq!(a.feed(&patch, &mut source, &mut out), Ok(Status::Done));
        assert_eq!(out, new);

        // A slot shorter than the patch's source is a wrong source, not a read of the
        // bytes after it.
        let mut short = FlashImage { flash: Ram(flash), base: 512, len: old.len() as u32 - 1 };
        let mut a = Applier::new();
        assert_eq!(a.feed(&patch, &mut short, &mut Vec::new()), Err(ApplyError::WrongSource));
    }

    #[test]
    fn a_full_image_applies_from_an_empty_slot() {
        let new: Vec<u8> = (0..5000u32).map(|i| (i % 7 * 31 + i / 700) as u8).collect();
        let patch = crate::compress(&new, &Config { load_address: Some(0x1000), ..Config::default() });
        assert!(patch.len() < new.len() / 4, "{} bytes", patch.len());
        // Nothing installed: a zero-length region of the flash is the old image.
        let mut source = FlashImage { flash: Ram(vec![0xEE; 64]), base: 32, len: 0 };
        let mut out = Vec::new();
        let mut a = Applier::new();
        for piece in patch.chunks(33) {
            a.feed(piece, &mut source, &mut out).expect("applies");
        }
        assert_eq!(a.finish(), Ok(()));
        assert_eq!(out, new);
    }
}
