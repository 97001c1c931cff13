//! banger-agent: see the library docs.
//!
//! `--init`: PID 1 from the initramfs (setup, then the image's own init);
//! `--serve` (or no argument): the agent service.

use std::sync::Arc;

use banger_agent::serve::{self, AgentState};

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--init") => banger_agent::init::run(),
        // Run by the readiness unit (banger-ready.service).
        Some("--mark-ready") => match banger_agent::ready::mark_ready(std::path::Path::new("/")) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("banger-agent: marking the guest ready: {e}");
                std::process::exit(1);
            }
        },
        _ => {}
    }
    // The guest's OOM killer must never take the host's way in.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let state = match std::fs::read(banger_agent::init::SETUP_FILE)
        .ok()
        .and_then(|b| serde_json::from_slice::<banger_agent::init::BootReport>(&b).ok())
    {
        // PID 1 did the setup.
        Some(r) => AgentState {
            setup_errors: r.errors,
            init: r.init,
            ready: if r.ready_unit {
                banger_agent::ready::Hook::Unit
            } else {
                banger_agent::ready::Hook::None
            },
            host_keys: Default::default(),
        },
        // Started on its own: set the guest up first.
        None => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            let (params, mut errors) = banger_agent::cmdline::GuestParams::parse(&cmdline);
            banger_agent::init::setup_guest(&params, &mut errors);
            AgentState {
                setup_errors: errors,
                init: std::fs::read_to_string("/proc/1/comm")
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                // Started on its own (not by banger's initramfs): no unit
                // to wait for.
                ready: banger_agent::ready::Hook::None,
                host_keys: Default::default(),
            }
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("banger-agent: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "banger-agent: serving ({} setup problems)",
        state.setup_errors.len()
    );
    let state = Arc::new(state);
    rt.block_on(async move {
        tokio::spawn(serve::serve_port(state.clone()));
        serve::serve_vsock(state).await;
    });
}
