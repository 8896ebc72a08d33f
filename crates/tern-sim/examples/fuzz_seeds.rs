//! Writes the seed inputs of the device fuzz targets into `fuzz/corpus/device-*`.
//!
//! `cargo run --release -p tern-sim --example fuzz_seeds -- <repository root>`

use std::path::PathBuf;

use tern_device::block::Block;
use tern_device::profile::NRF52840;
use tern_device::state::{self, RECORD_LEN};
use tern_sim::scenario::{synthetic, Scenario, Task};

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let write = |dir: &str, name: &str, data: &[u8]| {
        let d = root.join("fuzz/corpus").join(dir);
        std::fs::create_dir_all(&d).expect("corpus directory");
        std::fs::write(d.join(name), data).expect("seed written");
    };
    let sc: Scenario = synthetic(&NRF52840).into_iter().next().expect("scenario");
    let dev = sc.provisioned();
    // A real state record, and one with a flipped bit.
    let mut record = vec![0u8; RECORD_LEN];
    let bank = NRF52840.state_banks[0];
    dev.bench.borrow_mut().read(bank.dev as usize, bank.offset, &mut record).expect("read");
    write("device-state", "provisioned", &record);
    let mut flipped = record.clone();
    flipped[100] ^= 1;
    write("device-state", "bad-crc", &flipped);
    let _ = state::DeviceState::decode(&record).expect("the provisioned record decodes");
    // Block frames.
    let mut frame = vec![0u8; 6];
    let mut header = [0u8; 6];
    Block { module: 0, offset: 1024, data: &[] }.encode_header(&mut header);
    frame.copy_from_slice(&header);
    frame.extend_from_slice(&[0x5A; 1024]);
    write("device-block", "full", &frame);
    write("device-block", "short-last", &frame[..6 + 300]);
    write("device-block", "header-only", &frame[..6]);
    // A signed offer.
    if let Some(Task::Update { offer, .. }) = sc.tasks.first() {
        write("device-offer", "app-update", offer);
    }
    // Flash contents for boot: selector byte, then a pattern (a record tiled over flash).
    let mut boot = vec![1u8];
    boot.extend_from_slice(&record);
    write("device-boot", "records-everywhere", &boot);
    write("device-boot", "erased", &[0, 0xFF]);
    write("device-boot", "zeros", &[1, 0]);
}
