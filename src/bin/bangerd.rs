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
}

fn main() -> ExitCode {
    let args = Args::parse();
    banger::logging::init();
    let mut env = banger::paths::Env::from_process();
    if args.system {
        env.system = true;
    }
    let layout = banger::paths::Layout::resolve(&env);
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
