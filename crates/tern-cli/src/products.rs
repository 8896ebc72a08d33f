//! `tern product`, `tern group`, `tern release create | list | show` and a device's place in
//! the fleet (`tern device tag | untag | pin | unpin | budget | development`): the server's
//! fleet records, read as the server's own response types.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tern_server::store::{GroupRecord, Membership, ProductRecord, ReleaseRecord};

use crate::ops::{print_json, query_value, typed, Client};

/// `tern product …`.
#[derive(Subcommand)]
pub enum ProductCommand {
    /// Create a product: devices of one platform running one firmware line.
    Create {
        /// Product id (the product id in the modules' suffix), 1 to 65535.
        id: u32,
        /// Platform name or id: photon, p1, electron, argon, boron, esomx, bsom, tracker.
        #[arg(long)]
        platform: String,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List products.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a product: its devices, releases and groups.
    Show {
        /// Product id.
        id: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `tern group …`.
#[derive(Subcommand)]
pub enum GroupCommand {
    /// Create or replace a group: a saved filter over a product's devices, with maintenance
    /// windows and a data budget that apply to rollouts.
    #[command(after_help = "Filter terms (all must match): tag=NAME, connectivity=wifi|cellular, id=PREFIX*, \
                            id=ID.\nWindows (UTC, recurring): 'mon-fri 01:00-05:00', 'daily 22:00-02:00', \
                            'sat,sun 00:00-24:00'; a device in a group with windows is updated only while \
                            one is open.")]
    Set {
        /// Group name.
        name: String,
        /// The product whose devices it selects.
        #[arg(long)]
        product: u32,
        /// A filter term; repeat for several (all must match). None: every device of the product.
        #[arg(long = "filter", value_name = "TERM")]
        filter: Vec<String>,
        /// A maintenance window; repeat for several.
        #[arg(long = "window", value_name = "WINDOW")]
        windows: Vec<String>,
        /// Data budget of each member, bytes per month (a device's own budget wins).
        #[arg(long, value_name = "BYTES")]
        budget: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List groups.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a group: its filter, windows (open now or not) and members.
    Show {
        /// Group name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a group (not while a rollout targets it).
    Delete {
        /// Group name.
        name: String,
    },
}

/// `tern release create` (on the server).
#[derive(Args)]
#[command(after_help = "From a signed release bundle (`tern release build`): --bundle FILE --key KEY checks the \
                        bundle's signature with KEY, uploads its modules with statements signed by KEY (same \
                        platform, product and security counter as the bundle) and makes the release of them, \
                        in the bundle's order.")]
pub struct ReleaseCreate {
    /// The product.
    #[arg(long)]
    pub product: u32,
    /// Modules of the release, in install order: catalog SHA-256s or module files already
    /// uploaded (their SHA-256 is computed here).
    #[arg(value_name = "MODULE", required_unless_present = "bundle", conflicts_with = "bundle")]
    pub modules: Vec<String>,
    /// Make the release from a signed release bundle instead (needs --key).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub bundle: Option<std::path::PathBuf>,
    /// The key that signed the bundle (PKCS#8 PEM); it signs each module's statement.
    #[arg(long, value_name = "KEY")]
    pub key: Option<std::path::PathBuf>,
    /// A note for people.
    #[arg(long)]
    pub note: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A device's place in the fleet, the `tern device` subcommands that change it (each prints
/// the device's fleet record as JSON with `--json`).
#[derive(Subcommand)]
pub enum MembershipCommand {
    /// Put a device in a product (or `--none`).
    Product {
        /// Device id.
        id: String,
        /// Product id.
        product: Option<u32>,
        /// Take it out of its product.
        #[arg(long, conflicts_with = "product")]
        none: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add tags to a device.
    Tag {
        /// Device id.
        id: String,
        /// Tags: 1 to 64 of A-Z a-z 0-9 - _ . :
        #[arg(required = true)]
        tags: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove tags from a device.
    Untag {
        /// Device id.
        id: String,
        /// Tags.
        #[arg(required = true)]
        tags: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lock a device to a release of its product: no rollout touches it.
    Pin {
        /// Device id.
        id: String,
        /// Release number.
        release: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let rollouts update a device again.
    Unpin {
        /// Device id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a device's cellular data budget (bytes per calendar month, UTC), or `--none`.
    Budget {
        /// Device id.
        id: String,
        /// Bytes per month.
        bytes: Option<u64>,
        /// No budget.
        #[arg(long, conflicts_with = "bytes")]
        none: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark a device as a development device (no rollout touches it), or `--off`.
    Development {
        /// Device id.
        id: String,
        /// Clear the flag.
        #[arg(long)]
        off: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn product(cmd: ProductCommand) -> Result<ExitCode> {
    let client = Client::connect()?;
    match cmd {
        ProductCommand::Create { id, platform, name, json } => {
            let Some(known) = tern_image::platform::parse(&platform) else {
                bail!("--platform {platform}: unknown platform")
            };
            let body = json!({ "id": id, "platform": known.id, "name": name });
            let answer = client.post_json("/api/products", body).with_context(|| format!("product {id}"))?;
            if json {
                return print_json(&answer).map(|()| ExitCode::SUCCESS);
            }
            let product: ProductRecord = typed(answer)?;
            println!("product {} created ({}, {})", product.id, known.name, product.name);
        }
        ProductCommand::List { json } => {
            let answer = client.get_all("/api/products")?;
            if json {
                return print_json(&answer).map(|()| ExitCode::SUCCESS);
            }
            let products: Vec<ProductRecord> = typed(answer)?;
            println!("{:<8} {:<10} NAME", "PRODUCT", "PLATFORM");
            for p in products {
                println!("{:<8} {:<10} {}", p.id, platform_name(p.platform_id), p.name);
            }
        }
        ProductCommand::Show { id, json } => {
            let answer = client.get(&format!("/api/products/{id}"))?;
            if json {
                return print_json(&answer).map(|()| ExitCode::SUCCESS);
            }
            let product: ProductRecord = typed(answer.clone())?;
            let releases: Vec<ReleaseRecord> = typed(answer["releases"].clone())?;
            let devices: Vec<String> = typed(answer["devices"].clone())?;
            let groups: Vec<String> = typed(answer["groups"].clone())?;
            println!("product {} — {} ({})", product.id, product.name, platform_name(product.platform_id));
            println!("devices: {}", devices.len());
            println!("groups: {}", if groups.is_empty() { "none".to_owned() } else { groups.join(", ") });
            println!("releases:");
            for r in &releases {
                print_release_line(r);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn platform_name(id: u16) -> String {
    tern_image::platform::by_id(id).map_or_else(|| id.to_string(), |p| p.name.to_owned())
}

fn print_release_line(r: &ReleaseRecord) {
    let modules: Vec<String> =
        r.modules.iter().map(|m| format!("{} {} v{}", m.function_name, m.index, m.version)).collect();
    println!(
        "  {:>3}  {}{}",
        r.number,
        modules.join(", "),
        r.note.as_deref().map(|n| format!("  — {n}")).unwrap_or_default()
    );
}

pub fn group(cmd: GroupCommand) -> Result<ExitCode> {
    let client = Client::connect()?;
    match cmd {
        GroupCommand::Set { name, product, filter, windows, budget, json } => {
            let body = json!({ "name": name, "product": product, "filter": filter, "windows": windows, "budget_bytes": budget });
            let answer = client
                .put_json(&format!("/api/groups/{}", query_value(&name)), body)
                .with_context(|| format!("group {name}"))?;
            if json {
                return print_json(&answer).map(|()| ExitCode::SUCCESS);
            }
            let group: GroupRecord = typed(answer)?;
            println!("group {} saved (product {})", group.name, group.product);
        }
        GroupCommand::List { json } => {
            let answer = client.get_all("/api/groups")?;
            if json {
                return print_json(&answer).map(|()| ExitCode::SUCCESS);
            }
            let groups: Vec<GroupRecord> = typed(answer)?;
            println!("{:<20} {:<8} {:<30} WINDOWS", "GROUP", "PRODUCT", "FILTER");
            for g in groups {
                println!("{:<20} {:<8} {:<30} {}", g.name, g.product, g.filter.join(" "), g.windows.join("; "));
            }
        }
        GroupCommand::Show { name, json } => {
            let answer = client.get(&format!("/api/groups/{}", query_value(&name)))?;
            if json {
                return print_json(&answer).map(|()| ExitCode::SUCCESS);
            }
            let group: GroupRecord = typed(answer.clone())?;
            let devices: Vec<String> = typed(answer["devices"].clone())?;
            println!("group {} (product {})", group.name, group.product);
            println!(
                "filter: {}",
                if group.filter.is_empty() { "every device".to_owned() } else { group.filter.join(" and ") }
            );
            match group.windows.is_empty() {
                true => println!("maintenance windows: none (any time)"),
                false => println!(
                    "maintenance windows (UTC): {} — {} now",
                    group.windows.join("; "),
                    if answer["window_open"] == true { "open" } else { "closed" }
                ),
            }
            if let Some(b) = group.budget_bytes {
                println!("data budget: {b} bytes per month per device");
            }
            println!("devices ({}): {}", devices.len(), devices.join(" "));
        }
        GroupCommand::Delete { name } => {
            client.delete(&format!("/api/groups/{}", query_value(&name))).with_context(|| format!("group {name}"))?;
            println!("group {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A module argument: a catalog SHA-256, or a file whose SHA-256 is computed.
fn module_hash(arg: &str) -> Result<String> {
    if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) && !Path::new(arg).exists() {
        return Ok(arg.to_ascii_lowercase());
    }
    let bytes = std::fs::read(arg).with_context(|| format!("{arg}: not a SHA-256 and cannot be read as a file"))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Uploads a signed bundle's modules, each with a statement signed by `key` after checking
/// the bundle was signed by that key; returns their SHA-256s in the bundle's order.
fn upload_bundle(client: &Client, file: &Path, key: &Path) -> Result<Vec<String>> {
    use tern_image::manifest::build::Document;
    use tern_image::manifest::Kind;
    let key = crate::key::load_signing_key(key)?;
    let bytes = std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let bundle = tern_image::bundle::Bundle::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let verified = bundle
        .verify(&[key.verifying_key()])
        .map_err(|e| anyhow::anyhow!("{}: not signed by this key ({e})", file.display()))?;
    let m = &verified.manifest;
    let mut hashes = Vec::new();
    for (entry, module) in verified.modules() {
        let statement = Document {
            kind: Kind::ModuleStatement,
            platform_id: m.platform_id,
            product_id: m.product_id,
            security_counter: m.security_counter,
            created: m.created,
            modules: vec![*entry],
            name: String::new(),
        }
        .sign(&key)
        .map_err(|e| anyhow::anyhow!("cannot sign a statement: {e}"))?;
        let body = tern_image::bundle::write_signed_module(&statement, module)
            .map_err(|e| anyhow::anyhow!("the statement does not fit the module: {e}"))?;
        let name =
            format!("{}-{}", file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), hashes.len() + 1);
        client
            .post_bytes(&format!("/api/modules?filename={}", query_value(&name)), &body)
            .with_context(|| format!("{}: uploading module {}", file.display(), hashes.len() + 1))?;
        hashes.push(hex::encode(Sha256::digest(module)));
    }
    Ok(hashes)
}

pub fn release_create(args: ReleaseCreate) -> Result<ExitCode> {
    let client = Client::connect()?;
    let modules = match (&args.bundle, &args.key) {
        (Some(bundle), Some(key)) => upload_bundle(&client, bundle, key)?,
        _ => args.modules.iter().map(|m| module_hash(m)).collect::<Result<Vec<_>>>()?,
    };
    let answer = client
        .post_json(
            &format!("/api/products/{}/releases", args.product),
            json!({ "modules": modules, "note": args.note }),
        )
        .with_context(|| format!("product {}", args.product))?;
    if args.json {
        return print_json(&answer).map(|()| ExitCode::SUCCESS);
    }
    let release: ReleaseRecord = typed(answer)?;
    println!("release {} of product {} created:", release.number, release.product);
    print_release_line(&release);
    Ok(ExitCode::SUCCESS)
}

pub fn release_list(product: u32, json: bool) -> Result<ExitCode> {
    let answer = Client::connect()?.get_all(&format!("/api/products/{product}/releases"))?;
    if json {
        return print_json(&answer).map(|()| ExitCode::SUCCESS);
    }
    let releases: Vec<ReleaseRecord> = typed(answer)?;
    println!("releases of product {product}:");
    for r in &releases {
        print_release_line(r);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn release_show(product: u32, number: u32, json: bool) -> Result<ExitCode> {
    let answer = Client::connect()?.get(&format!("/api/products/{product}/releases/{number}"))?;
    if json {
        return print_json(&answer).map(|()| ExitCode::SUCCESS);
    }
    let r: ReleaseRecord = typed(answer)?;
    println!(
        "release {} of product {}{}",
        r.number,
        r.product,
        r.note.as_deref().map(|n| format!(" — {n}")).unwrap_or_default()
    );
    println!("{:<16} {:>5} {:>8} {:>8}  SHA-256 (file)", "MODULE", "INDEX", "VERSION", "BYTES");
    for m in &r.modules {
        println!("{:<16} {:>5} {:>8} {:>8}  {}", m.function_name, m.index, m.version, m.size, m.sha256);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn membership(cmd: MembershipCommand) -> Result<ExitCode> {
    let client = Client::connect()?;
    let (id, body, done, as_json) = match cmd {
        MembershipCommand::Product { id, product, none, json } => {
            if product.is_none() && !none {
                bail!("name a product, or pass --none");
            }
            let done = match product {
                Some(p) => format!("device {id} is in product {p}"),
                None => format!("device {id} is in no product"),
            };
            (id, json!({ "product": product }), done, json)
        }
        MembershipCommand::Tag { id, tags, json } => {
            let done = format!("device {id} tagged {}", tags.join(" "));
            (id, json!({ "add_tags": tags }), done, json)
        }
        MembershipCommand::Untag { id, tags, json } => {
            let done = format!("device {id} untagged {}", tags.join(" "));
            (id, json!({ "remove_tags": tags }), done, json)
        }
        MembershipCommand::Pin { id, release, json } => {
            let done = format!("device {id} pinned to release {release}: rollouts leave it alone");
            (id, json!({ "pinned_release": release }), done, json)
        }
        MembershipCommand::Unpin { id, json } => {
            let done = format!("device {id} unpinned");
            (id, json!({ "pinned_release": Value::Null }), done, json)
        }
        MembershipCommand::Budget { id, bytes, none, json } => {
            if bytes.is_none() && !none {
                bail!("give the budget in bytes per month, or pass --none");
            }
            let done = match bytes {
                Some(b) => format!("device {id}: data budget {b} bytes per month"),
                None => format!("device {id}: no data budget"),
            };
            (id, json!({ "budget_bytes": bytes }), done, json)
        }
        MembershipCommand::Development { id, off, json } => {
            let done = match off {
                true => format!("device {id} is no longer a development device"),
                false => format!("device {id} is a development device: rollouts leave it alone"),
            };
            (id, json!({ "development": !off }), done, json)
        }
    };
    let answer = client
        .patch_json(&format!("/api/devices/{}/fleet", query_value(&id)), body)
        .with_context(|| format!("device {id}"))?;
    if as_json {
        return print_json(&answer).map(|()| ExitCode::SUCCESS);
    }
    let m: Membership = typed(answer)?;
    println!("{done}");
    let tags = if m.tags.is_empty() { "none".to_owned() } else { m.tags.join(" ") };
    println!(
        "  product {} · tags {} · pinned {} · development {} · budget {}",
        m.product.map_or("none".to_owned(), |p| p.to_string()),
        tags,
        m.pinned_release.map_or("no".to_owned(), |r| format!("to release {r}")),
        if m.development { "yes" } else { "no" },
        m.budget_bytes.map_or("none".to_owned(), |b| format!("{b} B/month"))
    );
    Ok(ExitCode::SUCCESS)
}
