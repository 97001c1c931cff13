//! bangerd: the banger daemon.
use std::process::ExitCode;

use clap::Parser;

static VERSION_TAIL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    banger::version::version_line("bangerd")
        .trim_start_matches("bangerd ")
        .to_string()
});

/// The banger daemon. Normally started by `banger` on demand or by systemd.
#[derive(Parser)]
#[command(name = "bangerd", version = VERSION_TAIL.as_str())]
struct Args {
    /// Use the system layout (/etc/banger, /var/lib/banger, /run/banger)
    #[arg(long)]
    system: bool,
    /// Report readiness on this inherited file descriptor
    #[arg(long, hide = true)]
    ready_fd: Option<i32>,
    /// Say which store migrations a start would apply, change nothing
    /// (exit 0: none pending, 1: some pending, 2: the store cannot be read)
    #[arg(long)]
    check_migrations: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut env = banger::paths::Env::from_process();
    if args.system {
        env.system = true;
    }
    let layout = banger::paths::Layout::resolve(&env);
    // The config's log_level, unless BANGER_LOG says otherwise (a config
    // that does not load is reported by the daemon itself).
    let level =
        banger::config::Config::load(&layout.config_file(), banger::config::HostFacts::probe())
            .ok()
            .and_then(|c| c.log_level);
    banger::logging::init_with(level.as_deref());
    if args.check_migrations {
        return check_migrations(&layout.store_file());
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bangerd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(banger::daemon::run(banger::daemon::DaemonOptions {
        layout,
        ready_fd: args.ready_fd,
    }));
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bangerd: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--check-migrations`: the store opened read-only, nothing written.
fn check_migrations(path: &std::path::Path) -> ExitCode {
    use banger::store::migrations::{latest_version, MIGRATIONS};
    if !path.exists() {
        println!(
            "{}: absent; the first start creates it at schema v{}",
            path.display(),
            latest_version()
        );
        return ExitCode::SUCCESS;
    }
    let version = match banger::store::Store::open_read_only(path).and_then(|s| s.schema_version())
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("bangerd: {e}");
            return ExitCode::from(2);
        }
    };
    let pending: Vec<_> = MIGRATIONS.iter().filter(|m| m.version > version).collect();
    if version > latest_version() {
        eprintln!(
            "{}: schema v{version} is newer than this bangerd knows (v{}); use a newer bangerd",
            path.display(),
            latest_version()
        );
        return ExitCode::from(2);
    }
    if pending.is_empty() {
        println!("{}: schema v{version}, up to date", path.display());
        return ExitCode::SUCCESS;
    }
    println!(
        "{}: schema v{version}; a start would apply:",
        path.display()
    );
    for m in pending {
        println!("  v{}: {}", m.version, m.name);
    }
    ExitCode::from(1)
}
