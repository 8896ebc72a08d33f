//! A reset at any point of an apply resumes from the persisted marker to the same image.

use tern_delta::{make, Applier, ApplyError, Config, NewImage, Progress, Status};

use crate::corpus::{load_of, pairs};

/// Staging flash that loses power after `budget` writes; it records what reached it and
/// refuses writes that go backwards below the marker it was resumed from.
struct Staging {
    bytes: Vec<u8>,
    writes_left: Option<usize>,
    floor: u32,
}

impl NewImage for Staging {
    type Error = ();
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), ()> {
        assert!(offset >= self.floor, "rewrote {offset} below the resume marker {}", self.floor);
        assert_eq!(offset as usize, self.bytes.len(), "writes are sequential");
        if let Some(left) = &mut self.writes_left {
            if *left == 0 {
                return Err(());
            }
            *left -= 1;
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ()> {
        // Only what reached staging (before the reset too) can be read back.
        let at = offset as usize;
        buf.copy_from_slice(self.bytes.get(at..at + buf.len()).expect("the applier reads only what it wrote"));
        Ok(())
    }
}

/// Runs an apply that is cut after `budget` writes, persists the marker, and resumes.
pub fn cut_and_resume(old: &[u8], patch: &[u8], budget: usize, chunk: usize) -> Vec<u8> {
    let mut staging = Staging { bytes: Vec::new(), writes_left: Some(budget), floor: 0 };
    let mut a = Applier::new();
    let mut o = old;
    let mut marker = None;
    for piece in patch.chunks(chunk) {
        match a.feed(piece, &mut o, &mut staging) {
            Ok(_) => marker = Some(a.progress().to_bytes()),
            Err(ApplyError::WriteNew) => break,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // Power is back: what staging holds is the prefix the last persisted marker names
    // (bytes written after it are rewritten).
    let progress = marker.map(Progress::from_bytes).unwrap_or(Progress { written: 0, patch_id: [0; 4] });
    if progress.written == 0 {
        staging.bytes.clear();
        let mut a = Applier::new();
        let mut staging2 = Staging { bytes: Vec::new(), writes_left: None, floor: 0 };
        assert_eq!(a.feed(patch, &mut o, &mut staging2), Ok(Status::Done));
        return staging2.bytes;
    }
    staging.bytes.truncate(progress.written as usize);
    staging.writes_left = None;
    staging.floor = progress.written;
    let mut a = Applier::resume(progress);
    let mut status = Status::NeedMore;
    for piece in patch.chunks(chunk + 13) {
        status = a.feed(piece, &mut o, &mut staging).expect("the resumed apply succeeds");
    }
    assert_eq!(status, Status::Done);
    staging.bytes
}

#[test]
fn resuming_after_a_reset_at_many_points_gives_the_same_image() {
    let (_, old, new) =
        pairs().into_iter().find(|(name, _, _)| name.contains("argon_bootloader")).expect("the Argon bootloader pair");
    let patch = make(&old, &new, &Config { load_address: Some(load_of(&new)), ..Config::default() });
    // 46 580 bytes are written in 128-byte pieces: 364 writes. Cut after every 10th.
    let writes = new.len().div_ceil(128);
    let mut cuts = 0;
    for budget in (0..writes).step_by(10) {
        for chunk in [37, 500] {
            assert!(cut_and_resume(&old, &patch, budget, chunk) == new, "cut after {budget} writes, chunk {chunk}");
        }
        cuts += 1;
    }
    assert!(cuts > 30);
}

#[test]
fn a_marker_from_another_patch_is_refused() {
    let (_, old, new) =
        pairs().into_iter().find(|(name, _, _)| name.contains("argon_bootloader")).expect("the Argon bootloader pair");
    let patch = make(&old, &new, &Config { load_address: Some(load_of(&new)), ..Config::default() });
    let mut a = Applier::resume(Progress { written: 512, patch_id: [1, 2, 3, 4] });
    let mut out = Vec::new();
    let mut o: &[u8] = &old;
    assert_eq!(a.feed(&patch, &mut o, &mut out), Err(ApplyError::WrongProgress));
    // A marker beyond the image is refused too.
    let h = tern_delta::Header::parse(&patch).expect("header");
    let id = [h.new_sha256[0], h.new_sha256[1], h.new_sha256[2], h.new_sha256[3]];
    let mut a = Applier::resume(Progress { written: h.new_len + 1, patch_id: id });
    assert_eq!(a.feed(&patch, &mut o, &mut out), Err(ApplyError::WrongProgress));
}
