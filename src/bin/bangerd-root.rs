//! bangerd-root: banger's privileged helper.
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

static VERSION_TAIL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    banger::version::version_line("bangerd-root")
        .trim_start_matches("bangerd-root ")
        .to_string()
});

/// banger's root helper: bridges, taps and VMM processes for one owner uid.
#[derive(Parser)]
#[command(name = "bangerd-root", version = VERSION_TAIL.as_str())]
struct Args {
    /// The uid whose bangerd may use this helper
    #[arg(long)]
    owner_uid: u32,
    /// The owner's banger runtime directory (holds the sockets)
    #[arg(long)]
    runtime_dir: std::path::PathBuf,
    /// Report readiness on this inherited file descriptor
    #[arg(long, hide = true)]
    ready_fd: Option<i32>,
    /// Make banger's top cgroup for VMMs (and let it use the memory, pids
    /// and cpu controllers), then exit: run by the installed unit before
    /// its sandbox makes the cgroup root read-only
    #[arg(long)]
    prepare_cgroups: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    banger::logging::init();
    if !args.runtime_dir.is_absolute() {
        eprintln!("bangerd-root: --runtime-dir must be an absolute path");
        return ExitCode::from(2);
    }
    if args.prepare_cgroups {
        let Some(layout) = banger::host::cgroup::Layout::detect() else {
            eprintln!("bangerd-root: no cgroup memory controller here; VMMs will run without per-VM cgroups");
            return ExitCode::SUCCESS;
        };
        let cpus = banger::config::HostFacts::probe().cpus;
        return match layout.prepare_top(banger::helper::vmm_ops::group_cpu_weight(cpus)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bangerd-root: {e}; VMMs will run without per-VM cgroups");
                ExitCode::from(1)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bangerd-root: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(banger::helper::run(banger::helper::HelperOptions {
        owner_uid: args.owner_uid,
        runtime_dir: args.runtime_dir,
        ready_fd: args.ready_fd,
        net: Arc::new(banger::host::net::IpCommand),
    }));
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bangerd-root: {e}");
            ExitCode::from(1)
        }
    }
}
