//! Chaos: real-module updates while simulated devices and the server are SIGKILLed at
//! random moments, each round checked against the devices' flash, read back from their
//! state directories independently of the server (issue 14).
//!
//! The rig: a `tern server` process and four `tern sim device` processes (two Photons
//! with the corpus Device OS 2.3 taking real Tinker applications, two Argons with the
//! corpus SoftDevice taking the real Device OS 4.0.2 ↔ 4.1.0 bootloader and system part
//! sets), each with its flash in a state directory. Every round starts one update per
//! device (to the set it does not run, carrying an `Idempotency-Key` that is repeated
//! until the server answers), then kills — at a random moment in the transfer — the
//! server, some devices, or both, and restarts them 0–2 s later. Each round then checks:
//!
//! - every attempt is final within [`BOUND`] of its creation (the configured attempt
//!   deadline, plus the time the server was down);
//! - the server's view equals the device's truth: the inventory it lists is the modules
//!   the flash's state record holds, an attempt is `confirmed` exactly when the flash runs
//!   its modules confirmed;
//! - no device is left receiving after its attempt ended (the state record is idle, and
//!   the gateway hears almost nothing from the devices once every attempt is final);
//! - no confirmed update is downloaded again (same: a device that restarts a finished
//!   transfer sends block requests, and its state record leaves idle);
//! - one attempt per client key, whatever the kills did to the requests.
//!
//! `chaos_rounds_agree_with_flash` runs [`CI_ROUNDS`] rounds; `TERN_CHAOS_ROUNDS=N`
//! runs N instead (the documented long run is 500: `docs/chaos.md`), `TERN_CHAOS_SEED`
//! picks the seed. The three sequences the issue found are regression tests of their own.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::EncodePublicKey;
use serde_json::Value;
use tern_device::agent::Agent;
use tern_device::profile::Profile;
use tern_device::state::{BootState, UpdatePhase, UpdateResult};
use tern_fleet::provision;
use tern_sim::device::{Image, SimDevice};

use crate::support::{free_port, release_key, scratch, statement_signed_by, Server};

/// Rounds of the CI run.
const CI_ROUNDS: u64 = 60;
/// The server's settings for the rig: re-offers from 0.5 s doubling to 3 s, give up after
/// 20 s without progress, every attempt over 60 s after its creation.
const SERVER_TOML: &str =
    "offer_retry_ms = 500\nreoffer_max_ms = 3000\ngive_up_after_ms = 20000\nattempt_deadline_ms = 60000\n";
/// Every attempt must be final this long after its creation: the deadline plus slack for
/// a server that was down when it passed and for polling.
const BOUND: Duration = Duration::from_secs(70);

/// The quiet check: once every attempt of a round is final, the devices together send at
/// most [`QUIET_MESSAGES`] messages in this window (a Result and a Describe each after a
/// reconnect; a device still receiving sends Progress twice a second and block requests).
const QUIET_WINDOW: Duration = Duration::from_millis(1200);
const QUIET_MESSAGES: u64 = 8;

/// A small deterministic PRNG (SplitMix64), so a failing round can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

/// One simulated device of the rig: its two module sets and its process.
struct Dev {
    id: String,
    profile: &'static Profile,
    state: PathBuf,
    /// The two sets it alternates between (each the modules that differ).
    sets: [Vec<Image>; 2],
    process: Option<Child>,
}

impl Dev {
    /// Which of its sets the flash runs (`None`: neither, completely).
    fn running(&self, truth: &Truth) -> Option<usize> {
        (0..2).find(|&i| self.sets[i].iter().all(|m| truth.installed.contains(&hex(&m.entry.sha256))))
    }
}

/// What a device's flash says, read from its state directory.
#[derive(Debug)]
struct Truth {
    installed: Vec<String>,
    phase: UpdatePhase,
    attempt: Option<u64>,
    last_result: UpdateResult,
    confirmed: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads device `dev`'s flash image as the device itself would after a reset: the state
/// record's installed modules, update phase, attempt and last result.
fn read_flash(dev: &Dev) -> Truth {
    let keys = vec![release_key().verifying_key()];
    let device = SimDevice::load(&dev.state.join(tern_fleet::runtime::FLASH_FILE), keys.clone())
        .unwrap_or_else(|e| panic!("{}: flash unreadable: {e}", dev.id));
    let mut storage = device.storage();
    let agent = Agent::load(&mut storage, dev.profile, &keys).unwrap_or_else(|_| panic!("{}: no state", dev.id));
    let st = agent.state();
    Truth {
        installed: st.installed.iter().flatten().map(|m| hex(&m.sha256)).collect(),
        phase: st.phase,
        attempt: st.attempt,
        last_result: st.last_result,
        confirmed: matches!(st.boot, BootState::Confirmed { .. }),
    }
}

/// The rig: server data and ports, the key devices trust, the devices.
struct Rig {
    dir: PathBuf,
    tern: PathBuf,
    data: PathBuf,
    http: u16,
    mqtt: u16,
    key: PathBuf,
    server: Option<Server>,
    devices: Vec<Dev>,
    /// Seconds the server was down, for the bound.
    server_down: Duration,
}

fn corpus_module(name: &str, platform: u16) -> Image {
    let path = tern_testkit::corpus().join(name);
    tern_sim::corpus::module(&path, platform).unwrap_or_else(|e| panic!("corpus module {name}: {e}"))
}

impl Rig {
    /// A server with the rig's settings and `photons` + `argons` devices provisioned with
    /// corpus modules, none started yet.
    fn new(name: &str, photons: usize, argons: usize) -> Rig {
        let dir = scratch(name);
        let data = dir.join("server");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("tern.toml"), SERVER_TOML).unwrap();
        let key = dir.join("release.pub.pem");
        let pem = release_key().verifying_key().to_public_key_pem(Default::default()).expect("PEM");
        std::fs::write(&key, pem).unwrap();
        let tern = crate::cli::tern();
        let (http, mqtt) = (free_port(), free_port());
        let server = Server::spawn(&tern, &data, http, mqtt);
        let mut rig = Rig {
            dir,
            tern,
            data,
            http,
            mqtt,
            key,
            server: Some(server),
            devices: Vec::new(),
            server_down: Duration::ZERO,
        };
        let keys = vec![release_key().verifying_key()];
        let corpus = tern_testkit::corpus();
        let fixtures = "particle/fixtures";
        let releases = "particle/releases";
        for i in 0..photons {
            let tinker2 = corpus_module(&format!("{fixtures}/cli_binaries_photon_tinker.bin"), 6);
            let tinker3 = corpus_module(&format!("{fixtures}/cli_binaries_photon_tinker-0.4.5.bin"), 6);
            let (dev, _) = provision::corpus_photon(keys.clone(), &corpus, "2.3.0", tinker2.clone(), tinker2.clone())
                .expect("a corpus Photon");
            rig.add(&format!("photon-{i}"), "photon", dev, [vec![tinker2], vec![tinker3]]);
        }
        for i in 0..argons {
            let app = corpus_module(
                &format!("{fixtures}/cli_assets_knownApps_argon_tinker_tinker-0.8.0-rc.27-argon.bin"),
                12,
            );
            let set = |v: &str| {
                vec![
                    corpus_module(&format!("{releases}/argon-bootloader@{v}.bin"), 12),
                    corpus_module(&format!("{releases}/argon-system-part1@{v}.bin"), 12),
                ]
            };
            let (dev, _) =
                provision::corpus_argon(keys.clone(), &corpus, "4.0.2", app.clone(), app).expect("a corpus Argon");
            rig.add(&format!("argon-{i}"), "argon", dev, [set("4.0.2"), set("4.1.0")]);
        }
        rig
    }

    fn add(&mut self, id: &str, platform: &str, dev: SimDevice, sets: [Vec<Image>; 2]) {
        let state = self.dir.join("devices").join(id);
        std::fs::create_dir_all(&state).unwrap();
        dev.save(&state.join(tern_fleet::runtime::FLASH_FILE)).expect("the flash saves");
        let secret = self.server().add_device(id, platform);
        std::fs::write(state.join("secret"), secret).unwrap();
        let profile = dev.profile;
        self.devices.push(Dev { id: id.to_owned(), profile, state, sets, process: None });
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("the server runs")
    }

    /// Starts `tern sim device` for device `i` from its state directory.
    fn start_device(&mut self, i: usize) {
        let dev = &mut self.devices[i];
        if dev.process.is_some() {
            return;
        }
        let log = std::fs::File::create(dev.state.join("log.txt")).expect("a log file");
        let child = Command::new(&self.tern)
            .args(["sim", "device", "--server", &format!("mqtt://127.0.0.1:{}", self.mqtt), "--id", &dev.id])
            .args(["--profile", dev.profile.name, "--trust"])
            .arg(&self.key)
            .arg("--state")
            .arg(&dev.state)
            .env("HOME", &self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tern sim device starts");
        dev.process = Some(child);
    }

    /// SIGKILLs device `i`: what it did not save yet is lost, as with a power cut.
    fn kill_device(&mut self, i: usize) {
        if let Some(mut child) = self.devices[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn kill_server(&mut self) -> Instant {
        if let Some(server) = self.server.take() {
            server.kill();
        }
        Instant::now()
    }

    fn start_server(&mut self, down_since: Option<Instant>) {
        if self.server.is_none() {
            self.server = Some(Server::spawn(&self.tern, &self.data, self.http, self.mqtt));
            if let Some(since) = down_since {
                self.server_down += since.elapsed();
            }
        }
    }

    /// Waits until every device is connected (the server says online).
    fn wait_online(&self) {
        let start = Instant::now();
        for dev in &self.devices {
            loop {
                let (status, d) = self.server().get(&format!("/api/devices/{}", dev.id));
                if status == 200 && d["online"] == true && d["inventory"].is_object() {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(60), "{} never came online: {d}", dev.id);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Uploads every module of every set to the catalog with a statement signed by the
    /// release key (so plans can name them, downgrades included).
    fn upload_modules(&self) {
        for dev in &self.devices {
            for image in dev.sets.iter().flatten() {
                let platform = dev.profile.platform_id;
                let statement = statement_signed_by(image, platform, &release_key());
                let body = tern_image::bundle::write_signed_module(&statement, &image.bytes).expect("a signed module");
                let (status, module) = self.server().post_bytes("/api/modules?filename=chaos", &body);
                assert!(status == 201 || status == 200, "upload: {status} {module}");
            }
        }
    }

    /// `method` `path` with `body` (JSON) and optionally an `Idempotency-Key`, repeated
    /// until the server answers (it may be down or dying); returns the status and answer.
    fn call_until_answered(&self, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
        let start = Instant::now();
        loop {
            if let Some(server) = &self.server {
                let mut request = crate::support::agent()
                    .post(&format!("{}{path}", server.http))
                    .header("Authorization", &format!("Bearer {}", server.token));
                if let Some(key) = key {
                    request = request.header("Idempotency-Key", key);
                }
                if let Ok(mut response) = request.send_json(body) {
                    let status = response.status().as_u16();
                    let text = response.body_mut().read_to_string().unwrap_or_default();
                    return (status, serde_json::from_str(&text).unwrap_or(Value::String(text)));
                }
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{path}: never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Plans the update of device `i` to `set` (downgrades allowed) and starts it with
    /// client key `key`, each request repeated until answered; returns the attempt id.
    fn start_update(&self, i: usize, set: usize, key: &str) -> i64 {
        let dev = &self.devices[i];
        let modules: Vec<String> = dev.sets[set].iter().map(|m| hex(&m.entry.sha256)).collect();
        let request = serde_json::json!({ "modules": modules, "allow_downgrade": true });
        let (status, plan) = self.call_until_answered(&format!("/api/devices/{}/plans", dev.id), &request, None);
        assert_eq!(status, 201, "{}: plan: {plan}", dev.id);
        let start = format!("/api/plans/{}/start", plan["id"]);
        let (status, attempt) = self.call_until_answered(&start, &serde_json::json!({}), Some(key));
        assert!(status == 200 || status == 201, "{}: start answered {status}: {attempt}", dev.id);
        attempt["id"].as_i64().expect("an attempt id")
    }

    /// Polls attempt `id` until it is final; `None` when not final within `bound` of
    /// `created`.
    fn wait_final(&self, id: i64, created: Instant, bound: Duration) -> Option<Value> {
        loop {
            let (status, a) = self.server().get(&format!("/api/attempts/{id}"));
            if status == 200 && a["finished"] == true {
                return Some(a);
            }
            if created.elapsed() > bound {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Messages the gateway received from devices so far.
    fn messages_in(&self) -> u64 {
        let (_, stats) = self.server().get("/api/stats");
        stats["link"]["messages_in"].as_u64().unwrap_or(0)
    }

    /// Checks the server's view of device `i` against its flash; returns the
    /// disagreements found (re-reading the flash for a few seconds, as the simulated device
    /// saves it every 2 s).
    fn compare(&self, i: usize, attempt: Option<&Value>) -> Vec<String> {
        let dev = &self.devices[i];
        let mut problems = Vec::new();
        for _ in 0..8 {
            problems = self.compare_once(dev, attempt);
            if problems.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        problems
    }

    fn compare_once(&self, dev: &Dev, attempt: Option<&Value>) -> Vec<String> {
        let truth = read_flash(dev);
        let (_, record) = self.server().get(&format!("/api/devices/{}", dev.id));
        let mut listed: Vec<String> = crate::support::inventory_modules(&record)
            .iter()
            .filter_map(|m| m["sha256"].as_str().map(str::to_owned))
            .collect();
        let mut installed = truth.installed.clone();
        listed.sort();
        installed.sort();
        let mut problems = Vec::new();
        if listed != installed {
            problems.push(format!("{}: the server lists {listed:?}, the flash holds {installed:?}", dev.id));
        }
        if truth.phase != UpdatePhase::Idle {
            problems.push(format!("{}: the flash is {:?} after its attempt ended: {truth:?}", dev.id, truth.phase));
        }
        if let Some(a) = attempt {
            let id = a["id"].as_u64().unwrap_or(0);
            let plan: Vec<String> = a["plan"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["sha256"].as_str().map(str::to_owned))
                .collect();
            let runs_plan = !plan.is_empty() && plan.iter().all(|h| truth.installed.contains(h)) && truth.confirmed;
            let confirmed = a["state"] == "confirmed";
            if confirmed && !runs_plan {
                problems.push(format!("{}: attempt {id} confirmed, but the flash does not run it: {truth:?}", dev.id));
            }
            let own = truth.attempt.map(|t| t & ((1 << 48) - 1)) == Some(id);
            if !confirmed && runs_plan && own && truth.last_result == UpdateResult::Confirmed {
                problems
                    .push(format!("{}: attempt {id} is {} but the flash confirmed it: {truth:?}", dev.id, a["state"]));
            }
        }
        problems
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for i in 0..self.devices.len() {
            self.kill_device(i);
        }
    }
}

/// What one round did, for the report.
#[derive(Default, Debug)]
struct Tally {
    rounds: u64,
    attempts: u64,
    by_state: std::collections::BTreeMap<String, u64>,
    server_kills: u64,
    device_kills: u64,
    longest: Duration,
    disagreements: Vec<String>,
    not_final: Vec<String>,
    chatty: Vec<String>,
    duplicate_keys: Vec<String>,
}

/// The chaos run: [`CI_ROUNDS`] rounds, or `TERN_CHAOS_ROUNDS`.
#[test]
fn chaos_rounds_agree_with_flash() {
    let rounds = std::env::var("TERN_CHAOS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(CI_ROUNDS);
    let seed = std::env::var("TERN_CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(14);
    let started = Instant::now();
    let mut rng = Rng(seed);
    let mut rig = Rig::new("fleet-chaos", 2, 2);
    rig.upload_modules();
    for i in 0..rig.devices.len() {
        rig.start_device(i);
    }
    rig.wait_online();
    let mut tally = Tally::default();
    let mut keys_used: Vec<(usize, String, i64)> = Vec::new();
    for round in 0..rounds {
        tally.rounds += 1;
        rig.server_down = Duration::ZERO;
        // Argons take a Device OS set every other round; Photons every round.
        let chosen: Vec<usize> =
            (0..rig.devices.len()).filter(|&i| rig.devices[i].id.starts_with("photon") || round % 2 == 0).collect();
        let mut attempts = Vec::new();
        for &i in &chosen {
            let truth = read_flash(&rig.devices[i]);
            let target = match rig.devices[i].running(&truth) {
                Some(0) => 1,
                _ => 0,
            };
            let key = format!("chaos-{seed}-{round}-{i}");
            let id = rig.start_update(i, target, &key);
            keys_used.push((i, key, id));
            attempts.push((i, id, Instant::now()));
        }
        // The chaos: at a random moment of the transfer, kill the server, some devices,
        // or a device and then the server; restart them 0–2 s later.
        let action = rng.below(5);
        std::thread::sleep(rng.millis(if round % 2 == 0 { 2500 } else { 300 }));
        let mut killed = Vec::new();
        let mut down_since = None;
        match action {
            0 => {
                down_since = Some(rig.kill_server());
                tally.server_kills += 1;
            }
            1 | 2 => {
                for &i in &chosen {
                    if rng.below(2) == 0 || killed.is_empty() {
                        rig.kill_device(i);
                        killed.push(i);
                    }
                }
            }
            3 => {
                let i = chosen[rng.below(chosen.len() as u64) as usize];
                rig.kill_device(i);
                killed.push(i);
                std::thread::sleep(rng.millis(500));
                down_since = Some(rig.kill_server());
                tally.server_kills += 1;
            }
            _ => {}
        }
        tally.device_kills += killed.len() as u64;
        std::thread::sleep(rng.millis(2000));
        rig.start_server(down_since);
        for i in 0..rig.devices.len() {
            rig.start_device(i);
        }
        let bound = BOUND + rig.server_down;
        let mut finals = Vec::new();
        for &(i, id, created) in &attempts {
            match rig.wait_final(id, created, bound) {
                Some(a) => {
                    tally.longest = tally.longest.max(created.elapsed());
                    *tally.by_state.entry(a["state"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
                    finals.push((i, Some(a)));
                }
                None => {
                    tally.not_final.push(format!("round {round}: attempt {id} of {} not final", rig.devices[i].id));
                    finals.push((i, None));
                }
            }
            tally.attempts += 1;
        }
        rig.wait_online();
        // Once every attempt is final the devices are quiet: a device still receiving, or
        // downloading a finished update again, asks for blocks several times a second.
        std::thread::sleep(Duration::from_millis(800));
        let before = rig.messages_in();
        std::thread::sleep(QUIET_WINDOW);
        let heard = rig.messages_in() - before;
        if heard > QUIET_MESSAGES {
            tally.chatty.push(format!("round {round}: {heard} messages in {QUIET_WINDOW:?} after every attempt ended"));
        }
        for (i, a) in &finals {
            for problem in rig.compare(*i, a.as_ref()) {
                tally.disagreements.push(format!("round {round}: {problem}"));
            }
        }
        eprintln!(
            "chaos round {round}: action {action}, killed devices {killed:?}, states {:?}",
            finals
                .iter()
                .map(|(_, a)| a.as_ref().map_or("-", |a| a["state"].as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
        );
    }
    // One attempt per client key: every attempt of the run was started with a key, so
    // the attempt ids are exactly one per key, none skipped.
    let mut ids: Vec<i64> = keys_used.iter().map(|(_, _, id)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != keys_used.len()
        || ids.last().zip(ids.first()).is_some_and(|(l, f)| (l - f + 1) as usize != ids.len())
    {
        tally.duplicate_keys.push(format!("{} keys, attempt ids {ids:?}", keys_used.len()));
    }
    if let Some(last) = ids.last() {
        let (status, _) = rig.server().get(&format!("/api/attempts/{}", last + 1));
        if status != 404 {
            tally.duplicate_keys.push(format!("an attempt {} exists beyond the {} keys", last + 1, keys_used.len()));
        }
    }
    eprintln!(
        "chaos: seed {seed}, {} rounds, {} attempts {:?}, {} server kills, {} device kills, longest attempt {:.1} s, \
         {} disagreements, {} not final, {} chatty, {:.0} s in all",
        tally.rounds,
        tally.attempts,
        tally.by_state,
        tally.server_kills,
        tally.device_kills,
        tally.longest.as_secs_f64(),
        tally.disagreements.len(),
        tally.not_final.len(),
        tally.chatty.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(tally.not_final.is_empty(), "attempts without a final state: {:#?}", tally.not_final);
    assert!(tally.disagreements.is_empty(), "server and flash disagree: {:#?}", tally.disagreements);
    assert!(tally.chatty.is_empty(), "devices still busy after their attempts ended: {:#?}", tally.chatty);
    assert!(tally.duplicate_keys.is_empty(), "{:#?}", tally.duplicate_keys);
    assert!(tally.server_kills > 0 && tally.device_kills > 0, "the run killed nothing: {tally:?}");
}

/// Waits until attempt `id` satisfies `check`, polling every 10 ms.
fn poll_attempt(rig: &Rig, id: i64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, a) = rig.server().get(&format!("/api/attempts/{id}"));
        if check(&a) {
            return a;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "attempt {id} never {what}: {a}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the device has started on the attempt: past `offered` (and `queued`, which the
/// attempt is until the update task sends its offer).
fn past_offer(attempt: &Value) -> bool {
    !matches!(attempt["state"].as_str(), Some("queued" | "offered"))
}

/// Copies directory `from` to `to`, recursively.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Sequence 1 of the issue: the device finishes an attempt the server has not stored the
/// end of (the server died before persisting verifying, staged, rebooting). Reproduced
/// exactly: the server is SIGKILLed mid-download and its data directory copied (the
/// attempt stored as downloading); it restarts, the device finishes, installs and
/// confirms; the server is killed again and its data directory put back. The restarted
/// server believes the attempt is downloading and offers it again: the device answers
/// with its result instead of downloading again, the attempt ends confirmed, no module
/// is sent again, and the device is quiet with its state record naming the attempt
/// confirmed.
#[test]
fn server_that_missed_the_end_is_answered_not_restarted() {
    let mut rig = Rig::new("fleet-chaos-finished", 0, 1);
    rig.upload_modules();
    rig.start_device(0);
    rig.wait_online();
    let created = Instant::now();
    let id = rig.start_update(0, 1, "finished-1");
    poll_attempt(&rig, id, "downloading", past_offer);
    let down = rig.kill_server();
    let stale = rig.dir.join("server-stale");
    copy_dir(&rig.data, &stale);
    rig.start_server(Some(down));
    let done = rig.wait_final(id, created, BOUND).expect("the attempt ends");
    assert_eq!(done["state"], "confirmed", "{done}");
    let total = done["bytes_total"].as_u64().unwrap();
    // The server forgets the end: its data directory as it was mid-download.
    let down = rig.kill_server();
    std::fs::remove_dir_all(&rig.data).unwrap();
    copy_dir(&stale, &rig.data);
    rig.start_server(Some(down));
    let (_, restored) = rig.server().get(&format!("/api/attempts/{id}"));
    assert_eq!(restored["finished"], false, "the server believes the attempt is unfinished: {restored}");
    // (`bytes_sent` is floored at the modules' size once confirmed: count requests.)
    let asked_before = restored["requests"].as_u64().unwrap();
    let a = rig.wait_final(id, Instant::now(), BOUND).expect("the attempt ends again");
    assert_eq!(a["state"], "confirmed", "{a}");
    let asked_after = a["requests"].as_u64().unwrap();
    let blocks = total.div_ceil(1024);
    assert!(
        asked_after - asked_before < blocks / 10,
        "no module asked for again: {asked_before} → {asked_after} requests"
    );
    rig.wait_online();
    std::thread::sleep(Duration::from_millis(800));
    let before = rig.messages_in();
    std::thread::sleep(QUIET_WINDOW);
    assert!(rig.messages_in() - before <= QUIET_MESSAGES, "the device is quiet after its attempt");
    let problems = rig.compare(0, Some(&a));
    assert!(problems.is_empty(), "{problems:#?}");
    let truth = read_flash(&rig.devices[0]);
    assert_eq!(truth.attempt.map(|t| t & ((1 << 48) - 1)), Some(id as u64), "{truth:?}");
    assert_eq!(truth.last_result, UpdateResult::Confirmed, "{truth:?}");
}

/// Sequence 2 of the issue: while the device downloads, its process and then the server
/// are SIGKILLed, and the device's flash comes back from before the offer (restored here
/// from a copy taken then). The attempt id lives in the flash's state record, so the
/// device never describes the new attempt as its own; the server offers it again and it
/// ends confirmed, with the flash, within the bound. (A download of the Argon set can
/// finish in under half a second on an idle machine: a try whose kill came after the
/// device finished is not this sequence, and is repeated the other way round.)
#[test]
fn flash_from_before_the_offer_never_claims_the_attempt() {
    let mut rig = Rig::new("fleet-chaos-restored", 0, 1);
    rig.upload_modules();
    rig.start_device(0);
    rig.wait_online();
    let flash = rig.devices[0].state.join(tern_fleet::runtime::FLASH_FILE);
    let mut tries = 0;
    let (id, a) = loop {
        tries += 1;
        assert!(tries <= 6, "every kill came after the download ended");
        // The flash as saved before the offer (the device saves it every 2 s as it
        // changes).
        std::thread::sleep(Duration::from_millis(2500));
        let before = read_flash(&rig.devices[0]);
        let target = if rig.devices[0].running(&before) == Some(0) { 1 } else { 0 };
        let before_offer = std::fs::read(&flash).expect("the saved flash");
        let created = Instant::now();
        let id = rig.start_update(0, target, &format!("restored-{tries}"));
        poll_attempt(&rig, id, "downloading", past_offer);
        rig.kill_device(0);
        let (_, at_kill) = rig.server().get(&format!("/api/attempts/{id}"));
        if at_kill["state"] != "downloading" {
            // Too late: the device had the whole download. Let the attempt end, go again.
            rig.start_device(0);
            rig.wait_final(id, created, BOUND).expect("the attempt ends");
            rig.wait_online();
            continue;
        }
        std::fs::write(&flash, &before_offer).expect("the flash is restored");
        std::thread::sleep(Duration::from_millis(100));
        let down = rig.kill_server();
        std::thread::sleep(Duration::from_millis(400));
        rig.start_device(0);
        std::thread::sleep(Duration::from_millis(300));
        rig.start_server(Some(down));
        let a = rig.wait_final(id, created, BOUND + rig.server_down).expect("the attempt ends within the bound");
        break (id, a);
    };
    assert_eq!(a["state"], "confirmed", "{a}");
    rig.wait_online();
    let problems = rig.compare(0, Some(&a));
    assert!(problems.is_empty(), "{problems:#?}");
    // No Describe ever named the attempt confirmed while the device ran other modules.
    let new: Vec<String> =
        a["plan"].as_array().unwrap().iter().map(|m| m["sha256"].as_str().unwrap().to_owned()).collect();
    let (_, record) = rig.server().get(&format!("/api/devices/{}", rig.devices[0].id));
    for event in record["history"].as_array().into_iter().flatten().filter(|e| e["kind"] == "device.described") {
        let result = &event["data"]["last_result"];
        let claims = result["attempt"].as_i64() == Some(id) && result["outcome"] == "confirmed";
        let runs =
            new.iter().all(|h| event["data"]["modules"].as_array().into_iter().flatten().any(|m| m["sha256"] == *h));
        assert!(!claims || runs, "the device claimed attempt {id} while running other modules: {event}");
    }
}

/// Sequence 3 of the issue: the server is SIGKILLed while `tern flash --wait` talks to it
/// (at several moments, from before the start request to the transfer) and restarted a
/// second later. `tern flash` reconnects, finds the attempt by its client key, follows it
/// and exits 0 with the confirmed attempt; exactly one attempt is made per run. With the
/// server gone for longer than `--reconnect-for`, it exits 4 and says the outcome is
/// unknown.
#[test]
fn tern_flash_finds_out_what_happened_after_losing_the_server() {
    let mut rig = Rig::new("fleet-chaos-flash", 1, 0);
    rig.start_device(0);
    rig.wait_online();
    let files: Vec<PathBuf> = (0..2)
        .map(|set| {
            let image = &rig.devices[0].sets[set][0];
            let path = rig.dir.join(format!("tinker-{set}.tern"));
            std::fs::write(&path, crate::support::bundle(6, &[image], 1)).unwrap();
            path
        })
        .collect();
    let attempts = |rig: &Rig| {
        let (_, record) = rig.server().get("/api/devices/photon-0");
        record["attempts"].as_array().map_or(0, Vec::len)
    };
    let flash = |rig: &Rig, file: &PathBuf, reconnect_for: &str| {
        let server = rig.server();
        Command::new(&rig.tern)
            .args(["flash", "photon-0"])
            .arg(file)
            .args(["--wait", "--json", "--timeout", "120", "--reconnect-for", reconnect_for])
            .env("TERN_SERVER", &server.http)
            .env("TERN_TOKEN", &server.token)
            .env("HOME", &rig.dir)
            .env_remove("TERN_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tern flash starts")
    };
    let mut lost = 0;
    for (run, delay) in [30u64, 120, 400].into_iter().enumerate() {
        let before = attempts(&rig);
        let truth = read_flash(&rig.devices[0]);
        let target = if rig.devices[0].running(&truth) == Some(0) { 1 } else { 0 };
        let child = flash(&rig, &files[target], "60");
        std::thread::sleep(Duration::from_millis(delay));
        let down = rig.kill_server();
        std::thread::sleep(Duration::from_secs(1));
        rig.start_server(Some(down));
        let out = child.wait_with_output().expect("tern flash ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run} ({delay} ms): exit {:?}: {stderr}", out.status);
        let attempt: Value = serde_json::from_slice(&out.stdout).expect("--json prints the attempt");
        assert_eq!(attempt["state"], "confirmed", "run {run}: {attempt}");
        assert_eq!(attempts(&rig), before + 1, "run {run}: one attempt per tern flash: {stderr}");
        lost += usize::from(stderr.contains("lost the server"));
        rig.wait_online();
        let problems = rig.compare(0, Some(&attempt));
        assert!(problems.is_empty(), "{problems:#?}");
    }
    assert!(lost > 0, "no run lost the server: the kills came too late to test anything");

    // The server stays away longer than tern flash waits for it.
    let truth = read_flash(&rig.devices[0]);
    let target = if rig.devices[0].running(&truth) == Some(0) { 1 } else { 0 };
    let child = flash(&rig, &files[target], "2");
    std::thread::sleep(Duration::from_millis(30));
    let down = rig.kill_server();
    let out = child.wait_with_output().expect("tern flash ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Killed before the start was sent (a loaded machine): nothing started, and it says so;
    // otherwise whether the attempt started is unknown (exit 4).
    if stderr.contains("while making the plan: nothing was started") {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
    } else {
        assert_eq!(out.status.code(), Some(4), "{stderr}");
        assert!(stderr.contains("unreachable") && stderr.contains("unknown"), "{stderr}");
    }
    rig.start_server(Some(down));
}
