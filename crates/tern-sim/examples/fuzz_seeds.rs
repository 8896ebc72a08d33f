//! Writes the seed inputs of the device fuzz targets into `fuzz/corpus/device-*`.
//!
//! `cargo run --release -p tern-sim --example fuzz_seeds -- <repository root>`

use std::path::PathBuf;

use tern_device::block::Block;
use tern_device::profile::NRF52840;
use tern_device::state::{self, RECORD_LEN};
use tern_sim::fuzz;
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
    // Signed offers (documents framed as `tern_sim::fuzz::split_offer` reads them): a
    // release manifest; module statements for a system part and an application with the
    // first block of the system part; a release manifest mixed with a statement.
    let documents = |name: &str| {
        let all = synthetic(&NRF52840);
        let sc = all.into_iter().find(|s| s.name == name).expect("scenario exists");
        match sc.tasks.into_iter().next() {
            Some(Task::Update { documents, modules, .. }) => (documents, modules),
            _ => panic!("{name} starts with an update"),
        }
    };
    let (release, _) = documents("app-update");
    write("device-offer", "app-update", &fuzz::join_offer(&[&release[0]], &[]));
    let (statements, modules) = documents("statements-system-part-and-app");
    let refs: Vec<&[u8]> = statements.iter().map(Vec::as_slice).collect();
    let mut first = [0u8; 6];
    Block { module: 0, offset: 0, data: &[] }.encode_header(&mut first);
    let mut frame = first.to_vec();
    frame.extend_from_slice(&modules[0].bytes[..1024]);
    write("device-offer", "statements-system-part-and-app", &fuzz::join_offer(&refs, &frame));
    write("device-offer", "release-and-statement", &fuzz::join_offer(&[&release[0], &statements[1]], &[]));
    // Flash contents for boot: selector byte, then a pattern (a record tiled over flash).
    let mut boot = vec![1u8];
    boot.extend_from_slice(&record);
    write("device-boot", "records-everywhere", &boot);
    write("device-boot", "erased", &[0, 0xFF]);
    write("device-boot", "zeros", &[1, 0]);
}
