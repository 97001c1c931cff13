//! The one logging set-up of both daemons: `tracing` to stderr (their log
//! file), level from `BANGER_LOG`, else the config's `log_level` (bangerd),
//! else `info`; no colour codes.

/// Installs the subscriber; call once, first thing in `main`.
pub fn init() {
    init_with(None)
}

/// Like [`init`], with a default level (the config's `log_level`) that
/// `BANGER_LOG` overrides.
pub fn init_with(level: Option<&str>) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.unwrap_or("info"))),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
