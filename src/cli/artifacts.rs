//! `banger kernel ...` and `banger image ...`.

use std::path::Path;

use clap::Subcommand;

use super::progress::ProgressView;
use super::render::{self, CliError, Table};
use super::{client, out, Ctx};
use crate::protocol::cli::{ImageView, KernelView, Reply, Request, SnapshotView};
use crate::size::format_size;

pub const KERNEL_LONG: &str = "\
Kernels that VMs boot: an ELF vmlinux, an initramfs and modules.

The 80% command:
  banger kernel pull debian-cloud
fetches Debian's cloud kernel through this host's apt (signature-checked),
extracts the vmlinux and builds an initramfs. You rarely need it by hand:
`banger image build` and `banger vm run` pull the kernel they need.

Also:
  banger kernel catalog                       named kernels; `kernel pull <name>`
  banger kernel list                          what is here
  banger kernel import mykernel --from ./dir  vmlinux|vmlinuz [+ initrd] [+ lib/modules/<ver>]
  banger kernel delete mykernel               refused while an image or VM uses it";

pub const IMAGE_LONG: &str = "\
Images that VMs boot from: a root filesystem and the initial /root.

The 80% command:
  banger image build debian-bookworm
builds the default image with mmdebstrap (through bangerd-root), pulling its
kernel first. Builds are cached by their inputs: a second build takes seconds.

Also:
  banger image pull docker.io/library/alpine:3.20   from an OCI registry (linux/amd64)
  banger image catalog                              named images; `image pull <name>`
  banger image cache prune --dry-run                caches no image uses
  banger image list                                 what is here (* = default)
  banger image export debian-bookworm -o img.tar.zst
  banger image import img.tar.zst --name copy       every sha256 is verified
  banger image promote copy                         make it the default
  banger image delete copy                          refused while a VM uses it";

/// A catalog name or anything else: completion offers the catalog's names
/// (read when the completion script is made), parsing takes any string.
#[derive(Clone)]
pub struct CatalogNames {
    kernels: bool,
}

impl clap::builder::TypedValueParser for CatalogNames {
    type Value = String;
    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }
    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        let layout = crate::paths::Layout::from_process();
        let names = crate::catalog::completion_names(Some(&layout.config_dir), self.kernels);
        Some(Box::new(
            names.into_iter().map(clap::builder::PossibleValue::new),
        ))
    }
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Fetch a kernel by its catalog name (banger kernel catalog), e.g. debian-cloud
    Pull {
        /// A catalog name: debian-cloud (Debian's cloud kernel via this host's apt) or a user catalog's
        #[arg(value_parser = CatalogNames { kernels: true }, hide_possible_values = true)]
        source: String,
        /// Name to store it under (default: the source name)
        #[arg(long)]
        name: Option<String>,
        /// Pin a kernel ABI version, e.g. 6.1.0-56 (default: newest apt offers)
        #[arg(long)]
        version: Option<String>,
    },
    /// Import a kernel from a directory
    Import {
        /// Name to store it under
        name: String,
        /// Directory with vmlinux or vmlinuz, optional initrd, optional lib/modules/<ver>
        #[arg(long)]
        from: String,
    },
    /// List kernels
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one kernel
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a kernel no image or VM uses
    #[command(visible_alias = "rm")]
    Delete { name: String },
    /// The kernels `kernel pull` knows by name (built-in and your catalog.toml)
    #[command(long_about = CATALOG_LONG)]
    Catalog {
        #[arg(long)]
        json: bool,
    },
}

pub const CATALOG_LONG: &str = "\
Named images and kernels with pinned sources: the built-in catalog plus
entries of your own in <config dir>/catalog.toml (~/.config/banger/catalog.toml),
which are bundles at a URL pinned by sha256 (make one with `banger image export`):

  [[image]]
  name = \"team-base\"
  description = \"our CI image\"
  url = \"https://files.example.com/team-base.tar.zst\"
  sha256 = \"<64 hex digits>\"
  size = 123456789          # bytes; a download is capped at it
  kernel = \"debian-cloud\"   # optional

  [[kernel]]
  name = \"team-kernel\"
  url = \"https://files.example.com/kernel.tar.zst\"   # vmlinux|vmlinuz [+ initrd] [+ lib/modules/<ver>]
  sha256 = \"<64 hex digits>\"
  size = 12345678

Downloads are verified before anything is published and kept by their sha256
in the cache. Pull one with `banger image pull <name>` / `banger kernel pull
<name>`, or just `banger vm run --image <name> -- ...`.";

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from its recipe (debian-bookworm)
    Build {
        /// Recipe name
        name: String,
        /// Ignore the build cache (downloaded packages are still reused)
        #[arg(long)]
        rebuild: bool,
    },
    /// Pull an image from an OCI registry (linux/amd64) or by its catalog name
    Pull {
        /// registry/repository[:tag|@digest] (e.g. docker.io/library/alpine:3.20), or a catalog name (banger image catalog)
        #[arg(value_parser = CatalogNames { kernels: false }, hide_possible_values = true)]
        reference: String,
        /// Name to store it under (default: repository-tag)
        #[arg(long)]
        name: Option<String>,
        /// Plain HTTP to a registry that is not on a loopback address
        #[arg(long)]
        insecure: bool,
    },
    /// Make an ext4 root file system you have an image (the agent added)
    #[command(
        long_about = "Make an ext4 root file system image you already have a banger image. The file is copied (yours is not changed), checked with e2fsck, and given banger's agent and the mount points a guest needs; a tree with /sbin/init boots it, one without gets the agent as PID 1.\n\n  banger image register mine --rootfs ./rootfs.ext4\n  banger vm run --rm --image mine -- cat /etc/os-release"
    )]
    Register {
        /// Name to store it under
        name: String,
        /// The ext4 file system image
        #[arg(long)]
        rootfs: String,
        /// The kernel it boots with (default: the default kernel, pulled if missing)
        #[arg(long)]
        kernel: Option<String>,
    },
    /// Import an image bundle (.tar.zst)
    Import {
        /// Bundle file
        bundle: String,
        /// Name to store it under (default: the name in its manifest)
        #[arg(long)]
        name: Option<String>,
    },
    /// Export an image as a bundle (.tar.zst)
    Export {
        name: String,
        /// Output file
        #[arg(short = 'o', long = "output")]
        output: String,
    },
    /// List images
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one image
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete an image no VM uses
    #[command(visible_alias = "rm")]
    Delete { name: String },
    /// Make an image the default for new VMs
    Promote { name: String },
    /// The images `image pull` knows by name (built-in and your catalog.toml)
    #[command(long_about = CATALOG_LONG)]
    Catalog {
        #[arg(long)]
        json: bool,
    },
    /// The build and pull caches
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Remove build entries, OCI blobs and downloads no image here uses
    Prune {
        /// Only print what would be removed
        #[arg(long)]
        dry_run: bool,
    },
}

fn abs(p: &str) -> Result<String, CliError> {
    let path = Path::new(p);
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| CliError::usage("invalid path", e.to_string()))?
            .join(path)
    };
    Ok(full.display().to_string())
}

async fn call(ctx: &Ctx, req: Request) -> Result<Reply, CliError> {
    let mut c = client::connect(&ctx.layout, true).await?;
    let view = ProgressView::new();
    let r = client::request(&mut c, &ctx.layout, req, |e| view.event(e)).await;
    view.finish();
    r
}

fn kernel_table(ks: &[KernelView]) -> String {
    let mut t = Table::new(["NAME", "VERSION", "INITRD", "MODULES", "SOURCE", "CREATED"]);
    for k in ks {
        t.row([
            k.name.clone(),
            k.kernel_version.clone(),
            if k.has_initrd { "yes" } else { "no" }.into(),
            if k.has_modules { "yes" } else { "no" }.into(),
            k.source.clone(),
            render::age(k.created_at_unix),
        ]);
    }
    t.render()
}

fn kernel_detail(k: &KernelView) -> String {
    let mut t = Table::bare();
    t.row(["name".to_string(), k.name.clone()]);
    t.row(["version".to_string(), k.kernel_version.clone()]);
    t.row(["arch".to_string(), k.arch.clone()]);
    t.row(["source".to_string(), k.source.clone()]);
    t.row(["dir".to_string(), k.dir.clone()]);
    t.row(["vmlinux sha256".to_string(), k.vmlinux_sha256.clone()]);
    t.row([
        "initrd".to_string(),
        if k.has_initrd { "yes" } else { "no" }.into(),
    ]);
    t.row([
        "modules".to_string(),
        if k.has_modules { "yes" } else { "no" }.into(),
    ]);
    t.render()
}

fn image_table(is: &[ImageView]) -> String {
    let mut t = Table::new(["NAME", "DISTRO", "KERNEL", "ROOTFS", "SOURCE", "CREATED"]);
    for i in is {
        t.row([
            if i.default {
                format!("{} *", i.name)
            } else {
                i.name.clone()
            },
            i.distro.clone(),
            i.kernel_ref.clone(),
            format_size(i.rootfs_bytes),
            i.source.split(':').next().unwrap_or("").to_string(),
            render::age(i.created_at_unix),
        ]);
    }
    t.render()
}

fn image_detail(i: &ImageView) -> String {
    let mut t = Table::bare();
    t.row(["name".to_string(), i.name.clone()]);
    t.row([
        "default".to_string(),
        if i.default { "yes" } else { "no" }.into(),
    ]);
    t.row(["distro".to_string(), i.distro.clone()]);
    t.row(["arch".to_string(), i.arch.clone()]);
    t.row(["kernel".to_string(), i.kernel_ref.clone()]);
    t.row(["dir".to_string(), i.dir.clone()]);
    t.row([
        "rootfs".to_string(),
        format!(
            "{} (sha256 {})",
            format_size(i.rootfs_bytes),
            i.rootfs_sha256
        ),
    ]);
    t.row([
        "work seed".to_string(),
        format!(
            "{} (sha256 {})",
            format_size(i.work_seed_bytes),
            i.work_seed_sha256
        ),
    ]);
    t.row(["source".to_string(), i.source.clone()]);
    t.render()
}

pub async fn kernel(ctx: &Ctx, cmd: KernelCommand) -> Result<u8, CliError> {
    let (req, json) = match cmd {
        KernelCommand::Pull {
            source,
            name,
            version,
        } => {
            let name = name.unwrap_or_else(|| source.clone());
            (
                Request::KernelPull {
                    source,
                    name,
                    version,
                },
                false,
            )
        }
        KernelCommand::Import { name, from } => (
            Request::KernelImport {
                name,
                from: abs(&from)?,
            },
            false,
        ),
        KernelCommand::List { json } => (Request::KernelList, json),
        KernelCommand::Show { name, json } => (Request::KernelShow { name }, json),
        KernelCommand::Delete { name } => (Request::KernelDelete { name }, false),
        KernelCommand::Catalog { json } => return catalog(ctx, true, json).await,
    };
    match call(ctx, req).await? {
        Reply::Kernels(ks) if json => out(&render::json(&ks))?,
        Reply::Kernels(ks) => out(&kernel_table(&ks))?,
        Reply::Kernel(k) if json => out(&render::json(&k))?,
        Reply::Kernel(k) => out(&kernel_detail(&k))?,
        Reply::Done => out("deleted\n")?,
        other => return Err(client::unexpected(other)),
    }
    Ok(0)
}

pub async fn image(ctx: &Ctx, cmd: ImageCommand) -> Result<u8, CliError> {
    let (req, json) = match cmd {
        ImageCommand::Build { name, rebuild } => (Request::ImageBuild { name, rebuild }, false),
        ImageCommand::Pull {
            reference,
            name,
            insecure,
        } => (
            Request::ImagePull {
                reference,
                name,
                insecure,
            },
            false,
        ),
        ImageCommand::Register {
            name,
            rootfs,
            kernel,
        } => (
            Request::ImageRegister {
                name,
                rootfs: abs(&rootfs)?,
                kernel,
            },
            false,
        ),
        ImageCommand::Import { bundle, name } => (
            Request::ImageImport {
                file: abs(&bundle)?,
                name,
            },
            false,
        ),
        ImageCommand::Export { name, output } => (
            Request::ImageExport {
                name,
                file: abs(&output)?,
            },
            false,
        ),
        ImageCommand::List { json } => (Request::ImageList, json),
        ImageCommand::Show { name, json } => (Request::ImageShow { name }, json),
        ImageCommand::Delete { name } => (Request::ImageDelete { name }, false),
        ImageCommand::Promote { name } => (Request::ImagePromote { name }, false),
        ImageCommand::Catalog { json } => return catalog(ctx, false, json).await,
        ImageCommand::Cache(CacheCommand::Prune { dry_run }) => {
            (Request::ImageCachePrune { dry_run }, false)
        }
    };
    match call(ctx, req).await? {
        Reply::Images(is) if json => out(&render::json(&is))?,
        Reply::Images(is) => out(&image_table(&is))?,
        Reply::Image(i) if json => out(&render::json(&i))?,
        Reply::Image(i) => out(&image_detail(&i))?,
        Reply::Exported { file, bytes } => {
            out(&format!("wrote {file} ({})\n", format_size(bytes)))?
        }
        Reply::Done => out("deleted\n")?,
        Reply::CachePruned(entries) => out(&pruned_text(&entries))?,
        other => return Err(client::unexpected(other)),
    }
    Ok(0)
}

fn pruned_text(entries: &[(String, u64)]) -> String {
    if entries.is_empty() {
        return "nothing to prune: every cache entry belongs to an image here\n".into();
    }
    let mut s = String::new();
    for (path, bytes) in entries {
        s.push_str(&format!("{:>10}  {path}\n", format_size(*bytes)));
    }
    let total: u64 = entries.iter().map(|e| e.1).sum();
    s.push_str(&format!(
        "freed {} in {} entries\n",
        format_size(total),
        entries.len()
    ));
    s
}

/// `image catalog` / `kernel catalog`: read here (the daemon reads the
/// same files); a row says whether it is pulled already.
async fn catalog(ctx: &Ctx, kernels: bool, json: bool) -> Result<u8, CliError> {
    let c = crate::catalog::load(&ctx.layout.config_dir)
        .map_err(|e| CliError::usage("invalid catalog", e.to_string()))?;
    let here: Vec<String> = match call(
        ctx,
        if kernels {
            Request::KernelList
        } else {
            Request::ImageList
        },
    )
    .await?
    {
        Reply::Images(is) => is.into_iter().map(|i| i.name).collect(),
        Reply::Kernels(ks) => ks.into_iter().map(|k| k.name).collect(),
        other => return Err(client::unexpected(other)),
    };
    let mark = |n: &str| {
        if here.iter().any(|h| h == n) {
            "yes"
        } else {
            "no"
        }
        .to_string()
    };
    let size = |b: u64| {
        if b == 0 {
            "-".to_string()
        } else {
            format_size(b)
        }
    };
    if kernels {
        if json {
            out(&render::json(&c.kernels))?;
            return Ok(0);
        }
        let mut t = Table::new(["NAME", "HERE", "SIZE", "SOURCE", "DESCRIPTION"]);
        for k in &c.kernels {
            t.row([
                k.name.clone(),
                mark(&k.name),
                size(k.size),
                k.source.describe(),
                k.description.clone(),
            ]);
        }
        out(&t.render())?;
    } else {
        if json {
            out(&render::json(&c.images))?;
            return Ok(0);
        }
        let mut t = Table::new(["NAME", "HERE", "SIZE", "KERNEL", "SOURCE", "DESCRIPTION"]);
        for i in &c.images {
            t.row([
                i.name.clone(),
                mark(&i.name),
                size(i.size),
                i.kernel.clone(),
                i.source.describe(),
                i.description.clone(),
            ]);
        }
        out(&t.render())?;
    }
    Ok(0)
}

pub const SNAPSHOT_LONG: &str = "\
Snapshots: a VM's memory, devices and disks at one instant. Take one with
`banger vm snapshot <vm>`; start new VMs from it with `--from`; each clone
gets its own name, addresses, SSH host key and reseeded RNG.

  banger vm snapshot dev --name warm        pause, save, resume
  banger vm run --rm --from warm -- make    a new VM restored from it
  banger snapshot list
  banger snapshot show warm
  banger snapshot delete warm               refused while a VM made from it exists";

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots
    #[command(visible_alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot no VM was made from
    #[command(visible_alias = "rm")]
    Delete { name: String },
    /// Delete automatic snapshots (warm starts, warm workspaces) unused for N days
    Prune {
        /// Unused for this many days (0: every unused automatic snapshot)
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
}

fn snapshot_table(ss: &[SnapshotView]) -> String {
    let mut t = Table::new(["NAME", "VM", "IMAGE", "SHAPE", "SIZE", "CREATED"]);
    for s in ss {
        t.row([
            if s.auto {
                format!("{} (auto)", s.name)
            } else {
                s.name.clone()
            },
            s.source_vm.clone(),
            s.image.clone(),
            format!("{} vcpu, {} MiB", s.vcpu, s.memory_mib),
            format_size(s.size_bytes),
            render::age(s.created_at_unix),
        ]);
    }
    t.render()
}

pub fn snapshot_detail(s: &SnapshotView) -> String {
    let mut t = Table::bare();
    t.row(["name".to_string(), s.name.clone()]);
    t.row(["source vm".to_string(), s.source_vm.clone()]);
    t.row(["image".to_string(), s.image.clone()]);
    t.row(["kernel".to_string(), s.kernel.clone()]);
    t.row(["vmm".to_string(), s.vmm.as_str().to_string()]);
    t.row([
        "shape".to_string(),
        format!(
            "{} vcpu, {} MiB, {} disk",
            s.vcpu,
            s.memory_mib,
            format_size(s.disk_bytes)
        ),
    ]);
    t.row(["size".to_string(), format_size(s.size_bytes)]);
    t.row(["dir".to_string(), s.dir.clone()]);
    t.row(["created".to_string(), render::age(s.created_at_unix)]);
    if let Some(scope) = &s.scope {
        // A warm workspace: what it was made for, and so serves.
        t.row(["scope".to_string(), scope.clone()]);
    }
    t.render()
}

pub async fn snapshot(ctx: &Ctx, cmd: SnapshotCommand) -> Result<u8, CliError> {
    let (req, json) = match cmd {
        SnapshotCommand::List { json } => (Request::SnapshotList, json),
        SnapshotCommand::Show { name, json } => (Request::SnapshotShow { name }, json),
        SnapshotCommand::Delete { name } => (Request::SnapshotDelete { name }, false),
        SnapshotCommand::Prune { days } => (Request::SnapshotPrune { days }, false),
    };
    match call(ctx, req).await? {
        Reply::Snapshots(ss) if json => out(&render::json(&ss))?,
        Reply::Snapshots(ss) => out(&snapshot_table(&ss))?,
        Reply::Snapshot(s) if json => out(&render::json(&s))?,
        Reply::Snapshot(s) => out(&snapshot_detail(&s))?,
        Reply::Done => out("deleted\n")?,
        Reply::Pruned(names) if names.is_empty() => out("nothing to prune\n")?,
        Reply::Pruned(names) => out(&format!("deleted {}\n", names.join(" ")))?,
        other => return Err(client::unexpected(other)),
    }
    Ok(0)
}
