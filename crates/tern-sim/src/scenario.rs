//! Update scenarios and the world that drives a simulated device through one: boots,
//! the simulated application, and a server that offers updates and answers block
//! requests. The same run works with or without injected faults; after a fault the
//! device is simply powered on again and the server carries on from what the device
//! reports, as a real server would.

use ed25519_dalek::SigningKey;
use tern_device::agent::{Agent, BlockError, BlockOutcome, BlockRequest, OfferError, OfferScope};
use tern_device::block::{Block, BLOCK_SIZE};
use tern_device::boot::{self, BootError, ResetCause, Run};
use tern_device::profile::{Profile, NRF52840, STM32F2};
use tern_device::state::{BootState, StagedTransfer, UpdatePhase, UpdateResult};
use tern_image::manifest::build::Document;
use tern_image::manifest::Kind;
use tern_image::model::{Dependency, ModuleFunction};
use tern_proto::Transfer;

use crate::device::{Behaviour, Image, SimDevice};
use crate::flash::{Bench, FaultKind, Op, OpKind, Rng};

/// The key every scenario signs with (fixed, so runs are reproducible).
pub fn scenario_key() -> SigningKey {
    SigningKey::from_bytes(&[0x7E; 32])
}

/// Something the server does.
#[derive(Clone, Debug)]
pub enum Task {
    /// Offer an update and deliver it.
    Update {
        /// The signed documents of the offer: one release manifest, or one module
        /// statement per module (as a server composes a plan from its catalog).
        documents: Vec<Vec<u8>>,
        /// The modules, in offer order.
        modules: Vec<Image>,
        /// The task ends when the update is installed and confirmed (`true`) or merely
        /// installed (`false`, used to send the next update during a test boot).
        wait_confirm: bool,
        /// The update is expected to fail (rolled back or replaced by the factory image).
        expect_fail: bool,
        /// Reset the device once after this many blocks (an interrupted download).
        reset_after_blocks: Option<usize>,
        /// How each module travels, in offer order, with the bytes sent for it (a patch);
        /// empty: every module as itself. A patch the device cannot apply is replaced by
        /// the whole module, as the server does.
        patches: Vec<Option<(Transfer, Vec<u8>)>>,
    },
    /// Request a factory restore.
    FactoryRestore,
}

/// What the device must end with.
#[derive(Clone, Debug)]
pub enum Expect {
    /// The initial modules with these replaced.
    New(Vec<Image>),
    /// The initial modules.
    Old,
    /// The initial modules with the factory application.
    Factory,
}

/// One scenario on one profile.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Scenario name.
    pub name: String,
    /// The profile.
    pub profile: &'static Profile,
    /// Installed and confirmed at the start.
    pub initial: Vec<Image>,
    /// The factory application.
    pub factory: Image,
    /// What the server does, in order.
    pub tasks: Vec<Task>,
    /// The expected end.
    pub expect: Expect,
    /// The tasks are stages of one upgrade (one offer each, as a device whose exchange area
    /// cannot hold the whole release takes it): the explorer sweeps each stage from the
    /// flash a clean run of the stages before it leaves, instead of replaying them for
    /// every fault.
    pub staged: bool,
}

impl Scenario {
    /// Every image the scenario mentions.
    pub fn images(&self) -> impl Iterator<Item = &Image> {
        self.initial.iter().chain(std::iter::once(&self.factory)).chain(self.tasks.iter().flat_map(|t| match t {
            Task::Update { modules, .. } => modules.as_slice(),
            Task::FactoryRestore => &[],
        }))
    }

    /// (slot, image) the device must hold at the end.
    pub fn expected(&self) -> Vec<(usize, Image)> {
        let p = self.profile;
        let mut out: Vec<(usize, Image)> = Vec::new();
        let mut set = |img: &Image| {
            let slot = p.slot_for(img.entry.function, img.entry.index).expect("scenario images have slots");
            out.retain(|(s, _)| *s != slot);
            out.push((slot, img.clone()));
        };
        self.initial.iter().for_each(&mut set);
        match &self.expect {
            Expect::New(images) => images.iter().for_each(set),
            Expect::Old => {}
            Expect::Factory => set(&self.factory),
        }
        out.sort_by_key(|(s, _)| *s);
        out
    }

    /// A signed manifest for `modules`.
    pub fn sign(profile: &Profile, modules: &[Image], counter: u64) -> Vec<u8> {
        Document {
            kind: Kind::Release,
            platform_id: profile.platform_id,
            product_id: 0,
            security_counter: counter,
            created: 1_790_000_000,
            modules: modules.iter().map(|m| m.entry).collect(),
            name: String::new(),
        }
        .sign(&scenario_key())
        .expect("scenario manifests are within the document limits")
    }

    /// One signed module statement per module, in order. The security counters differ
    /// (`counter`, `counter + 1`, …) so that the device must take the highest.
    pub fn statements(profile: &Profile, modules: &[Image], counter: u64) -> Vec<Vec<u8>> {
        (0u64..)
            .zip(modules)
            .map(|(i, m)| {
                Document {
                    kind: Kind::ModuleStatement,
                    platform_id: profile.platform_id,
                    product_id: 0,
                    security_counter: counter + i,
                    created: 1_790_000_000,
                    modules: vec![m.entry],
                    name: String::new(),
                }
                .sign(&scenario_key())
                .expect("a statement holds one module")
            })
            .collect()
    }

    /// A simulated device provisioned with the initial modules and factory image, and its
    /// operation counter reset.
    pub fn provisioned(&self) -> SimDevice {
        let mut dev = SimDevice::new(self.profile, vec![scenario_key().verifying_key()]);
        let initial: Vec<&Image> = self.initial.iter().collect();
        dev.provision(&initial, Some(&self.factory)).expect("scenario images fit their profile");
        dev.bench.borrow_mut().reset_counter();
        dev
    }
}

const SYNTH: usize = 3 * 1024 + 300;

fn dep(function: ModuleFunction, index: u8, version: u32) -> Dependency {
    Dependency { function, index, version }
}

fn update(profile: &Profile, modules: Vec<Image>, counter: u64) -> Task {
    Task::Update {
        documents: vec![Scenario::sign(profile, &modules, counter)],
        modules,
        wait_confirm: true,
        expect_fail: false,
        reset_after_blocks: None,
        patches: Vec::new(),
    }
}

/// An update of `modules` in which each module with a source travels as a delta from it
/// (`Some(old)`), or compressed (`Some(empty)`), or whole (`None`).
fn patched_update(profile: &Profile, modules: Vec<Image>, sources: &[Option<&Image>], counter: u64) -> Task {
    let mut task = update(profile, modules.clone(), counter);
    if let Task::Update { patches, .. } = &mut task {
        *patches = modules
            .iter()
            .zip(sources)
            .map(|(m, source)| {
                let old = (*source)?;
                let patch = tern_delta::make(&old.bytes, &m.bytes, &tern_delta::Config::default());
                let source = (!old.bytes.is_empty()).then_some(old.entry.sha256);
                Some((Transfer::Patch { source, length: patch.len() as u32 }, patch))
            })
            .collect();
    }
    task
}

/// The synthetic scenarios for a profile (small images so that every operation index can
/// be faulted in minutes).
pub fn synthetic(profile: &'static Profile) -> Vec<Scenario> {
    use Behaviour::*;
    use ModuleFunction::*;
    let p = profile;
    let img = |f, i, v, deps: &[Dependency], b| Image::synthetic(p, f, i, v, deps, b, SYNTH);
    let stm = p.slot_for(SystemPart, 2).is_some();
    let sys1 = img(SystemPart, 1, 100, &[], Healthy);
    let boot1 = img(Bootloader, 0, 10, &[], Healthy);
    let mut initial = vec![boot1.clone(), sys1.clone()];
    let sys2 = stm.then(|| img(SystemPart, 2, 100, &[dep(SystemPart, 1, 100)], Healthy));
    let radio = (!stm).then(|| img(RadioStack, 0, 200, &[], Healthy));
    initial.extend(sys2.clone());
    initial.extend(radio.clone());
    let app_dep = [dep(SystemPart, 1, 100)];
    let app = p.app_index();
    let app1 = img(UserPart, app, 1, &app_dep, Healthy);
    initial.push(app1.clone());
    let factory = Image::synthetic(p, UserPart, app, 0, &app_dep, Healthy, 2 * 1024 + 100);
    let base = |name: &str, tasks: Vec<Task>, expect: Expect, initial: &Vec<Image>| Scenario {
        name: name.to_string(),
        profile,
        initial: initial.clone(),
        factory: factory.clone(),
        tasks,
        expect,
        staged: false,
    };
    let mut out = Vec::new();

    let app2 = img(UserPart, app, 2, &app_dep, Healthy);
    out.push(base("app-update", vec![update(p, vec![app2.clone()], 1)], Expect::New(vec![app2.clone()]), &initial));

    let sys1b = img(SystemPart, 1, 101, &[], Healthy);
    let app3 = img(UserPart, app, 3, &[dep(SystemPart, 1, 101)], Healthy);
    let mut set = vec![sys1b.clone()];
    if stm {
        set.push(img(SystemPart, 2, 101, &[dep(SystemPart, 1, 101)], Healthy));
    }
    set.push(app3);
    out.push(base("system-parts-and-app", vec![update(p, set.clone(), 1)], Expect::New(set), &initial));

    if !stm {
        let radio2 = img(RadioStack, 0, 201, &[], Healthy);
        let sys1c = img(SystemPart, 1, 102, &[dep(RadioStack, 0, 201)], Healthy);
        let set = vec![radio2, sys1c];
        out.push(base("radio-stack-and-system-part", vec![update(p, set.clone(), 1)], Expect::New(set), &initial));
    }

    // The same kind of update composed by a server from its catalog: one signed module
    // statement per module instead of a release manifest.
    let sys1e = img(SystemPart, 1, 104, &[], Healthy);
    let app9 = img(UserPart, app, 9, &[dep(SystemPart, 1, 104)], Healthy);
    let set = vec![sys1e, app9];
    let mut by_statements = update(p, set.clone(), 1);
    if let Task::Update { documents, .. } = &mut by_statements {
        *documents = Scenario::statements(p, &set, 1);
    }
    out.push(base("statements-system-part-and-app", vec![by_statements], Expect::New(set), &initial));

    // Patches: the application as a delta from the one installed, and a system part
    // compressed (a patch from nothing) together with it; applied in staging, so a cut at
    // any operation of the application must leave the device as safe as a raw transfer.
    let app5 = img(UserPart, app, 5, &app_dep, Healthy);
    let delta = patched_update(p, vec![app5.clone()], &[Some(&app1)], 1);
    out.push(base("delta-app-update", vec![delta], Expect::New(vec![app5.clone()]), &initial));
    let nothing = Image { bytes: Vec::new(), ..sys1.clone() };
    let sys1f = img(SystemPart, 1, 105, &[], Healthy);
    let app6 = img(UserPart, app, 6, &[dep(SystemPart, 1, 105)], Healthy);
    let set = vec![sys1f, app6];
    let compressed = patched_update(p, set.clone(), &[Some(&nothing), Some(&app1)], 1);
    out.push(base("compressed-system-part-and-delta-app", vec![compressed], Expect::New(set), &initial));

    let boot2 = img(Bootloader, 0, 11, &[], Healthy);
    out.push(base(
        "bootloader-update",
        vec![update(p, vec![boot2.clone()], 1)],
        Expect::New(vec![boot2.clone()]),
        &initial,
    ));

    // A system part that needs the new bootloader, delivered together with it.
    let sys1d = img(SystemPart, 1, 103, &[dep(Bootloader, 0, 11)], Healthy);
    let set = vec![sys1d, boot2];
    out.push(base("system-part-and-bootloader", vec![update(p, set.clone(), 1)], Expect::New(set), &initial));

    let bad = img(UserPart, app, 4, &app_dep, Panic);
    let mut t = update(p, vec![bad], 1);
    if let Task::Update { expect_fail, .. } = &mut t {
        *expect_fail = true;
    }
    out.push(base("bad-app-rollback", vec![t], Expect::Old, &initial));

    // The running application works but never confirms a test boot; after the new one
    // panics, the rollback to it fails its test boot too, and the factory image is restored.
    let mut weak = initial.clone();
    weak.retain(|i| i.entry.function != UserPart);
    weak.push(img(UserPart, app, 1, &app_dep, NeverConfirms));
    let hang = img(UserPart, app, 5, &app_dep, Hang);
    let mut t = update(p, vec![hang], 1);
    if let Task::Update { expect_fail, .. } = &mut t {
        *expect_fail = true;
    }
    out.push(base("rollback-also-bad-factory-restore", vec![t], Expect::Factory, &weak));

    out.push(base("factory-restore-on-request", vec![Task::FactoryRestore], Expect::Factory, &initial));

    let slow = img(UserPart, app, 6, &app_dep, NeverConfirms);
    let app7 = img(UserPart, app, 7, &app_dep, Healthy);
    let mut first = update(p, vec![slow], 1);
    if let Task::Update { wait_confirm, .. } = &mut first {
        *wait_confirm = false;
    }
    out.push(base(
        "update-during-test-boot",
        vec![first, update(p, vec![app7.clone()], 2)],
        Expect::New(vec![app7]),
        &initial,
    ));

    let big = Image::synthetic(p, UserPart, app, 8, &app_dep, Healthy, 12 * 1024 + 7);
    let mut t = update(p, vec![big.clone()], 1);
    if let Task::Update { reset_after_blocks, .. } = &mut t {
        *reset_after_blocks = Some(7);
    }
    out.push(base("interrupted-download-resumed", vec![t], Expect::New(vec![big]), &initial));
    out
}

/// `n` application updates in a row, each installed and confirmed: the steady state of a
/// device's life, for wear figures (`tern sim cost`).
pub fn repeated_app_updates(profile: &'static Profile, n: u64) -> Scenario {
    let mut sc = synthetic(profile).into_iter().find(|s| s.name == "app-update").expect("every profile has app-update");
    let app_dep = [dep(ModuleFunction::SystemPart, 1, 100)];
    let app = profile.app_index();
    sc.name = format!("{n}-app-updates");
    sc.tasks = (0..n)
        .map(|k| {
            let img = Image::synthetic(
                profile,
                ModuleFunction::UserPart,
                app,
                10 + k as u32,
                &app_dep,
                Behaviour::Healthy,
                SYNTH,
            );
            update(profile, vec![img], 1 + k)
        })
        .collect();
    let last = match sc.tasks.last() {
        Some(Task::Update { modules, .. }) => modules.clone(),
        _ => Vec::new(),
    };
    sc.expect = Expect::New(last);
    sc
}

/// How a run ended.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Program/erase operations performed.
    pub ops: u64,
    /// The operation log.
    pub log: Vec<Op>,
    /// Faults actually injected.
    pub injected: Vec<(u64, FaultKind)>,
    /// Why the device is bricked, if it is.
    pub bricked: Option<String>,
    /// The device stopped in the documented bootloader-copy window of a profile without
    /// an immutable first stage (recoverable only through the MCU's ROM bootloader).
    pub residual_risk: bool,
    /// Broken invariants.
    pub violations: Vec<String>,
    /// Boots performed.
    pub boots: u32,
    /// Blocks sent by the server (duplicates included).
    pub blocks_sent: u64,
    /// Offers the device accepted (a task's update offered again after the device reported
    /// a failed verification counts twice).
    pub offers: u32,
    /// Per device: sector erases and bytes programmed.
    pub cost: Vec<(u64, u64)>,
    /// A sector wore out during the run: the device only had to keep running complete
    /// modules, not to finish the scenario.
    pub degraded: bool,
    /// Per device, per sector (in sector order): erases during the run.
    pub sector_erases: Vec<Vec<u32>>,
}

const MAX_BOOTS: u32 = 80;

/// Runs a scenario on a copy of `base` (a provisioned device's flash) with `faults`.
pub fn run(sc: &Scenario, base: &Bench, faults: &[(u64, FaultKind)]) -> Outcome {
    run_keeping(sc, base, faults, false).0
}

/// Many runs from one starting flash: each run's bench is restored from `base` by copying
/// back only the sectors the previous run changed ([`Bench::restore_from`]), instead of
/// copying every device (which is most of the cost of a short run). The outcome is the
/// same as [`run`]'s.
pub struct Runner<'a> {
    base: &'a Bench,
    spare: Option<Bench>,
}

impl<'a> Runner<'a> {
    /// Runs from `base` (borrowed, so it cannot change while the runner lives).
    pub fn new(base: &'a Bench) -> Self {
        Runner { base, spare: None }
    }

    /// Runs `sc` with `faults`.
    pub fn run(&mut self, sc: &Scenario, faults: &[(u64, FaultKind)]) -> Outcome {
        let mut bench = match self.spare.take() {
            Some(mut b) => {
                b.restore_from(self.base);
                b
            }
            None => self.base.clone(),
        };
        bench.faults = faults.to_vec();
        let (out, bench) = run_on(sc, self.base, faults, bench);
        self.spare = bench;
        out
    }
}

/// Runs a scenario without faults and returns the flash it ends with (its operation
/// counter reset): where the next stage of a staged upgrade starts.
pub fn run_to_end(sc: &Scenario, base: &Bench) -> (Outcome, Bench) {
    let (out, bench) = run_keeping(sc, base, &[], true);
    let mut bench = bench.expect("kept on request");
    bench.reset_counter();
    (out, bench)
}

/// The stages of a staged scenario, each as a scenario of its own with the flash it starts
/// from (a clean run of the stages before it); a scenario that is not staged is its own
/// single stage. Fails with the violations of a stage that does not complete cleanly.
pub fn stages(sc: &Scenario, base: &Bench) -> Result<Vec<(Scenario, Bench)>, String> {
    if !sc.staged {
        return Ok(vec![(sc.clone(), base.clone())]);
    }
    let mut out = Vec::new();
    let mut bench = base.clone();
    let mut installed = sc.initial.clone();
    let n = sc.tasks.len();
    for (k, task) in sc.tasks.iter().enumerate() {
        let Task::Update { modules, .. } = task else { return Err(format!("{}: a stage is not an update", sc.name)) };
        let stage = Scenario {
            name: format!("{} (stage {}/{n})", sc.name, k + 1),
            profile: sc.profile,
            initial: installed.clone(),
            factory: sc.factory.clone(),
            tasks: vec![task.clone()],
            expect: Expect::New(modules.clone()),
            staged: false,
        };
        let (done, next) = run_to_end(&stage, &bench);
        if done.bricked.is_some() || !done.violations.is_empty() {
            return Err(format!("{}: {:?} {:?}", stage.name, done.bricked, done.violations));
        }
        installed.retain(|i| {
            !modules.iter().any(|m| (m.entry.function, m.entry.index) == (i.entry.function, i.entry.index))
        });
        installed.extend(modules.iter().cloned());
        out.push((stage, std::mem::replace(&mut bench, next)));
    }
    Ok(out)
}

fn run_keeping(sc: &Scenario, base: &Bench, faults: &[(u64, FaultKind)], keep: bool) -> (Outcome, Option<Bench>) {
    // Reuse this thread's previous bench allocation: copying into it avoids faulting in
    // fresh pages for every run.
    let mut bench = SPARE.with(|spare| spare.borrow_mut().take()).unwrap_or_else(|| base.clone());
    bench.clone_from(base);
    let (out, bench) = run_on(sc, base, faults, bench);
    match bench {
        Some(b) if keep => (out, Some(b)),
        Some(b) => {
            SPARE.with(|spare| *spare.borrow_mut() = Some(b));
            (out, None)
        }
        None => (out, None),
    }
}

/// Runs `sc` with `faults` on `bench` (equal to `base`); returns the bench afterwards.
fn run_on(sc: &Scenario, base: &Bench, faults: &[(u64, FaultKind)], mut bench: Bench) -> (Outcome, Option<Bench>) {
    bench.faults = faults.to_vec();
    bench.rng = Rng(faults.iter().fold(0x5EED, |a, (i, k)| a ^ (i << 3) ^ *k as u64));
    let mut dev = SimDevice::with_bench(sc.profile, vec![scenario_key().verifying_key()], bench);
    let mut world = World {
        sc,
        out: Outcome::default(),
        task: 0,
        offer_sent: false,
        reset_done: false,
        sent_this_task: 0,
        received_before_reset: None,
        whole: false,
    };
    world.drive(&mut dev);
    let b = dev.bench.borrow();
    world.out.ops = b.op_count();
    world.out.log = b.ops.clone();
    world.out.injected = b.injected.clone();
    world.out.violations.extend(b.violations.iter().map(|v| format!("flash: {v}")));
    world.out.cost = b.devices.iter().map(|d| (d.stats.sector_erases, d.stats.bytes_programmed)).collect();
    world.out.sector_erases = b
        .devices
        .iter()
        .zip(&base.devices)
        .map(|(d, d0)| d.wear.iter().zip(&d0.wear).map(|(w, w0)| w.saturating_sub(*w0)).collect())
        .collect();
    drop(b);
    let bench = std::rc::Rc::try_unwrap(dev.bench).ok().map(std::cell::RefCell::into_inner);
    (world.out, bench)
}

thread_local! {
    static SPARE: std::cell::RefCell<Option<Bench>> = const { std::cell::RefCell::new(None) };
}

struct World<'a> {
    sc: &'a Scenario,
    out: Outcome,
    task: usize,
    /// The current task's update was sent at least once.
    offer_sent: bool,
    reset_done: bool,
    sent_this_task: usize,
    received_before_reset: Option<u64>,
    /// The task's patches could not be used: whole modules are offered.
    whole: bool,
}

enum Next {
    Reboot(ResetCause),
    Settled,
}

impl World<'_> {
    fn powered(dev: &SimDevice) -> bool {
        dev.bench.borrow().powered
    }

    fn drive(&mut self, dev: &mut SimDevice) {
        let profile = self.sc.profile;
        let mut cause = ResetCause::PowerOn;
        for _ in 0..MAX_BOOTS {
            dev.bench.borrow_mut().power_on();
            self.out.boots += 1;
            if !profile.immutable_first_stage && !self.bootloader_intact(dev) {
                self.out.residual_risk = true;
                self.out.bricked = Some("bootloader region incomplete and no immutable first stage".into());
                return;
            }
            let mut storage = dev.storage();
            let decision = match boot::boot(&mut storage, profile, cause) {
                Ok(d) => d,
                // A flash error with the power on (a failing program or erase): the port
                // resets and the boot manager resumes from its journal.
                Err(BootError::Flash(_)) => {
                    cause = if Self::powered(dev) { ResetCause::Software } else { ResetCause::PowerOn };
                    continue;
                }
                Err(e) => {
                    self.out.bricked = Some(format!("boot manager: {e:?}"));
                    return;
                }
            };
            if let Err(v) = self.check_running(dev, &decision.run) {
                self.out.violations.push(v);
                return;
            }
            let keys = dev.keys.clone();
            let mut agent = match Agent::load(&mut storage, profile, &keys) {
                Ok(a) => a,
                Err(_) if !Self::powered(dev) => {
                    cause = ResetCause::PowerOn;
                    continue;
                }
                Err(tern_device::state::LoadError::Flash(_)) => {
                    cause = ResetCause::Software;
                    continue;
                }
                Err(e) => {
                    self.out.violations.push(format!("agent failed to load: {e:?}"));
                    return;
                }
            };
            if let Some(before) = self.received_before_reset.take() {
                if agent.state().phase == UpdatePhase::Receiving {
                    let (now, _) = agent.progress();
                    let sector = u64::from(
                        profile.devices[profile.exchange.dev as usize]
                            .sector_at(profile.exchange.offset)
                            .map_or(0, |(_, s)| s),
                    );
                    if now + sector + u64::from(BLOCK_SIZE) < before {
                        self.out.violations.push(format!(
                            "transfer started over: {before} bytes received before the reset, {now} after"
                        ));
                    }
                }
            }
            let behaviour = match decision.run {
                Run::Application { .. } => {
                    let app = profile.app_slot().expect("profiles have an application slot");
                    let size = agent.state().installed[app].map_or(0, |m| m.size) as usize;
                    Behaviour::of_image(&dev.slot_bytes(app, size))
                }
                Run::SafeMode(_) => Behaviour::Healthy,
            };
            let test = matches!(decision.run, Run::Application { test: true });
            match behaviour {
                Behaviour::Panic => {
                    cause = ResetCause::Panic;
                    continue;
                }
                Behaviour::Hang => {
                    cause = ResetCause::Watchdog;
                    continue;
                }
                Behaviour::Healthy if test && agent.confirm(&mut storage).is_err() => {
                    cause = ResetCause::PowerOn;
                    continue;
                }
                _ => {}
            }
            match self.serve(dev, &mut agent, &mut storage) {
                Next::Reboot(c) => cause = c,
                Next::Settled if behaviour == Behaviour::NeverConfirms && test => cause = ResetCause::Watchdog,
                // Effects that show only at a later power-on (drift, retention) are waited
                // for: the device is power-cycled until none is pending, and must still boot
                // complete modules and end as expected.
                Next::Settled if !dev.bench.borrow().latent.is_empty() => cause = ResetCause::PowerOn,
                Next::Settled => {
                    self.final_check(dev, &agent, &decision.run);
                    return;
                }
            }
        }
        if !dev.bench.borrow().worn.is_empty() {
            self.out.degraded = true;
            return;
        }
        self.out.violations.push(format!("did not settle after {MAX_BOOTS} boots"));
    }

    /// A profile without an immutable first stage runs whatever is in the bootloader slot.
    fn bootloader_intact(&self, dev: &SimDevice) -> bool {
        let p = self.sc.profile;
        let Some(slot) = p.slot_for(ModuleFunction::Bootloader, 0) else { return true };
        let mut known = self.sc.images().filter(|i| i.entry.function == ModuleFunction::Bootloader).peekable();
        if known.peek().is_none() {
            return true;
        }
        known.any(|i| dev.slot_holds(slot, &i.bytes))
    }

    /// No partially written module is ever executed: every installed slot holds exactly
    /// one of the scenario's images when something runs.
    fn check_running(&self, dev: &SimDevice, run: &Run) -> Result<(), String> {
        let p = self.sc.profile;
        let app = p.app_slot();
        let mut running: Vec<&Image> = Vec::new();
        for (slot, def) in p.slots.iter().enumerate() {
            if matches!(run, Run::SafeMode(_)) && Some(slot) == app {
                continue;
            }
            let mut candidates =
                self.sc.images().filter(|i| i.entry.function == def.function && i.entry.index == def.index).peekable();
            if candidates.peek().is_none() {
                continue;
            }
            match candidates.find(|i| dev.slot_holds(slot, &i.bytes)) {
                Some(image) => running.push(image),
                None => return Err(format!("{run:?} started with slot {} not holding a complete module", def.name)),
            }
        }
        // Judged from what is really on flash, not from what the device believes.
        for image in &running {
            for dep in image.entry.dependencies().filter(|d| d.function != ModuleFunction::None) {
                let met = running.iter().any(|m| dep.is_satisfied_by(m.entry.function, m.entry.index, m.entry.version));
                if !met {
                    return Err(format!("{run:?} started {} whose dependency {dep:?} is not met", image.name));
                }
            }
        }
        Ok(())
    }

    fn serve(&mut self, dev: &SimDevice, agent: &mut Agent<'_>, storage: &mut crate::device::SimStorage) -> Next {
        for _ in 0..100_000 {
            let Some(task) = self.sc.tasks.get(self.task) else { return Next::Settled };
            let st = agent.state().clone();
            match task {
                Task::FactoryRestore => {
                    let app = self.sc.profile.app_slot().expect("application slot");
                    let restored = st.installed[app].map(|m| m.sha256) == Some(self.sc.factory.entry.sha256);
                    if restored && st.last_result == UpdateResult::FactoryRestoredOnRequest {
                        self.next_task();
                        continue;
                    }
                    if !st.factory_requested && agent.request_factory_restore(storage).is_err() {
                        return Next::Reboot(ResetCause::PowerOn);
                    }
                    return Next::Reboot(ResetCause::Software);
                }
                Task::Update { documents, modules, wait_confirm, expect_fail, reset_after_blocks, patches } => {
                    let patches = if self.whole { &[][..] } else { patches.as_slice() };
                    let installed = modules.iter().all(|m| {
                        let slot = self.sc.profile.slot_for(m.entry.function, m.entry.index);
                        slot.and_then(|s| st.installed[s]).map(|r| r.sha256) == Some(m.entry.sha256)
                    });
                    let confirmed = matches!(st.boot, BootState::Confirmed { .. });
                    if installed && st.job.is_none() && (confirmed || !wait_confirm) && !expect_fail {
                        self.next_task();
                        continue;
                    }
                    let failed = matches!(
                        st.last_result,
                        UpdateResult::RolledBackUnconfirmed
                            | UpdateResult::RolledBackFaults
                            | UpdateResult::RolledBackInvalid
                            | UpdateResult::FactoryRestored
                    );
                    if *expect_fail && self.offer_sent && failed && st.phase == UpdatePhase::Idle {
                        self.next_task();
                        continue;
                    }
                    if *expect_fail && installed {
                        // Installed and on test: the application decides what happens next.
                        return Next::Settled;
                    }
                    match st.phase {
                        UpdatePhase::Staged => return Next::Reboot(ResetCause::Software),
                        UpdatePhase::Idle | UpdatePhase::Preparing => {
                            let hashes: Vec<[u8; 32]> = modules.iter().map(|m| m.entry.sha256).collect();
                            let transfers: Vec<Transfer> =
                                patches.iter().map(|p| p.as_ref().map_or(Transfer::Raw, |(t, _)| *t)).collect();
                            let scope = OfferScope { attempt: None, modules: &hashes, transfers: &transfers };
                            // Sent, whatever becomes of it: a device that loses power while
                            // taking it may still have journaled it and go on by itself, and
                            // then a failed result it reports ends the task (the server does
                            // not offer an update the device already tried and rejected).
                            self.offer_sent = true;
                            let offered = if patches.is_empty() {
                                agent.handle_offer_documents(storage, documents.iter().map(Vec::as_slice))
                            } else {
                                agent.handle_offer_scoped(storage, documents.iter().map(Vec::as_slice), scope)
                            };
                            match offered {
                                Ok(_) => self.out.offers += 1,
                                Err(_) if !Self::powered(dev) => return Next::Reboot(ResetCause::PowerOn),
                                // The device does not run the patch's source (a retention
                                // flip, say): the server sends whole modules.
                                Err(OfferError::DeltaSource(..)) => {
                                    self.whole = true;
                                    continue;
                                }
                                Err(OfferError::Flash(_)) => return Next::Reboot(ResetCause::Software),
                                Err(e) => {
                                    self.out.violations.push(format!("offer refused: {e:?}"));
                                    return Next::Settled;
                                }
                            }
                        }
                        UpdatePhase::Receiving => {
                            let mut window = [BlockRequest { module: 0, offset: 0, len: 0 }; 8];
                            let n = match agent.missing_blocks(storage, &mut window) {
                                Ok(n) => n,
                                Err(_) => return Next::Reboot(ResetCause::PowerOn),
                            };
                            if n == 0 {
                                self.out.violations.push("receiving, but no block is missing".into());
                                return Next::Settled;
                            }
                            // Deliver the window out of order, with a duplicate.
                            let mut order: Vec<usize> = (0..n).rev().collect();
                            if n > 1 {
                                order.push(n / 2);
                            }
                            for k in order {
                                let r = window[k];
                                // What the device staged says how the module travels.
                                let staged = agent.state().staged().nth(r.module as usize).map(|s| s.transfer);
                                let bytes = match (staged, patches.get(r.module as usize)) {
                                    (Some(StagedTransfer::Patch { .. }), Some(Some((_, patch)))) => patch,
                                    _ => &modules[r.module as usize].bytes,
                                };
                                let data = &bytes[r.offset as usize..(r.offset + r.len) as usize];
                                self.out.blocks_sent += 1;
                                self.sent_this_task += 1;
                                match agent.handle_block(storage, Block { module: r.module, offset: r.offset, data }) {
                                    Ok(BlockOutcome::Complete) => return Next::Reboot(ResetCause::Software),
                                    Ok(_) => {}
                                    // The device restarted the transfer; keep serving what it asks.
                                    Err(BlockError::MarkersExhausted) => break,
                                    Err(_) if !Self::powered(dev) => {
                                        self.received_before_reset = Some(agent.progress().0);
                                        return Next::Reboot(ResetCause::PowerOn);
                                    }
                                    // A flash error with the power on: the port resets.
                                    Err(BlockError::Flash(_)) => return Next::Reboot(ResetCause::Software),
                                    // The staged update failed its verification (a program
                                    // failed silently): the device reports it, the server
                                    // offers the update again.
                                    Err(BlockError::VerifyFailed(_)) => return Next::Reboot(ResetCause::Software),
                                    // A patch that cannot be applied (its source was
                                    // damaged): the server falls back to whole modules.
                                    Err(BlockError::PatchFailed(_)) => {
                                        self.whole = true;
                                        return Next::Reboot(ResetCause::Software);
                                    }
                                    Err(e) => {
                                        self.out.violations.push(format!("block refused: {e:?}"));
                                        return Next::Settled;
                                    }
                                }
                                if *reset_after_blocks == Some(self.sent_this_task) && !self.reset_done {
                                    self.reset_done = true;
                                    self.received_before_reset = Some(agent.progress().0);
                                    return Next::Reboot(ResetCause::PowerOn);
                                }
                            }
                        }
                    }
                }
            }
        }
        self.out.violations.push("the server made no progress".into());
        Next::Settled
    }

    fn next_task(&mut self) {
        self.task += 1;
        self.offer_sent = false;
        self.reset_done = false;
        self.sent_this_task = 0;
        self.whole = false;
    }

    /// The final state is the expected release, the device reports it correctly, and the
    /// application runs confirmed.
    fn final_check(&mut self, dev: &SimDevice, agent: &Agent<'_>, run: &Run) {
        let st = agent.state();
        if !dev.bench.borrow().worn.is_empty() {
            // With a worn-out sector the update may not complete; what runs was already
            // checked to be complete modules with their dependencies met.
            self.out.degraded = true;
            return;
        }
        // A rollback copy whose bits flipped (retention) cannot be restored: the factory
        // image is then the expected fallback instead of the previous application.
        let flipped = dev.bench.borrow().injected.iter().any(|(_, k)| *k == FaultKind::Retention);
        let fell_to_factory = matches!(st.last_result, UpdateResult::FactoryRestored);
        let mut sc = self.sc.clone();
        if matches!(sc.expect, Expect::Old) && flipped && fell_to_factory {
            sc.expect = Expect::Factory;
        }
        for (slot, img) in sc.expected() {
            let name = self.sc.profile.slots[slot].name;
            let reported = st.installed[slot].map(|m| m.sha256);
            if reported != Some(img.entry.sha256) {
                self.out
                    .violations
                    .push(format!("{name}: device reports another module than the expected {}", img.name));
            }
            if !dev.slot_holds(slot, &img.bytes) {
                self.out.violations.push(format!("{name}: flash does not hold the expected {}", img.name));
            }
        }
        if !matches!(run, Run::Application { .. }) || !matches!(st.boot, BootState::Confirmed { .. }) {
            self.out.violations.push(format!("ended in {run:?} with boot state {:?}", st.boot));
        }
        let ok = match sc.expect {
            Expect::New(_) => st.last_result == UpdateResult::Confirmed,
            Expect::Old => matches!(
                st.last_result,
                UpdateResult::RolledBackUnconfirmed | UpdateResult::RolledBackFaults | UpdateResult::RolledBackInvalid
            ),
            Expect::Factory => {
                matches!(st.last_result, UpdateResult::FactoryRestored | UpdateResult::FactoryRestoredOnRequest)
            }
        };
        if !ok {
            self.out.violations.push(format!("device reports {:?} as the result", st.last_result));
        }
    }
}

/// Every scenario: the synthetic ones on both profiles, plus the real-corpus ones when
/// `corpus` is given.
pub fn all(corpus: Option<&std::path::Path>) -> Result<Vec<Scenario>, String> {
    let mut out = synthetic(&STM32F2);
    out.extend(synthetic(&NRF52840));
    if let Some(dir) = corpus {
        out.extend(crate::corpus::scenarios(dir)?);
    }
    Ok(out)
}

/// Whether an operation touches the bootloader slot (the residual-risk window of a
/// profile without an immutable first stage).
pub fn touches_bootloader(profile: &Profile, op: &Op) -> bool {
    let Some(slot) = profile.slot_for(ModuleFunction::Bootloader, 0) else { return false };
    let r = profile.slots[slot].region;
    op.dev == r.dev
        && op.offset < r.end()
        && r.offset < op.offset + op.len.max(1)
        && matches!(op.kind, OpKind::Write | OpKind::Erase)
}
