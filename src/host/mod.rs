//! Host side effects, behind small traits so error paths are testable.
//! Only `bangerd-root` calls the privileged parts.

pub mod cgroup;
pub mod cpu;
pub mod firewall;
pub mod nat;
pub mod net;
pub mod process;
pub mod resolver;
pub mod seccomp;

use std::path::PathBuf;

/// Finds a system tool at a fixed set of absolute locations (never `$PATH`:
/// the helper runs as root and must not be steered by its environment).
pub fn system_tool(name: &str) -> Option<PathBuf> {
    // Root's own directories only (never a PATH from the environment);
    // /usr/local last, for tools an administrator installed.
    [
        "/usr/sbin",
        "/sbin",
        "/usr/bin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|d| PathBuf::from(d).join(name))
    .find(|p| p.is_file())
}

/// A failed host operation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "{tool} is not installed (looked in /usr/sbin, /sbin, /usr/bin, /bin, /usr/local/sbin, /usr/local/bin); install {package}"
    )]
    MissingTool { tool: String, package: String },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// bangerd-root's own runtime directory: network claims and the
/// forwarding record, per network namespace.
pub const ROOT_RUNTIME_DIR: &str = "/run/banger-root";

/// How long one `ip`/`iptables`/`ebtables` run may take before it is
/// killed: a hung tool must not wedge the network actor.
pub const TOOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a tool with arguments (no shell, bounded in time and output),
/// returning stdout or a [`HostError::Command`] carrying stderr.
pub fn run_tool(tool: &str, package: &str, args: &[&str]) -> Result<String, HostError> {
    run_tool_with(tool, package, args, None)
}

/// [`run_tool`] with `input` on its stdin.
pub fn run_tool_with(
    tool: &str,
    package: &str,
    args: &[&str],
    input: Option<Vec<u8>>,
) -> Result<String, HostError> {
    let path = system_tool(tool).ok_or_else(|| HostError::MissingTool {
        tool: tool.into(),
        package: package.into(),
    })?;
    let command = || format!("{tool} {}", args.join(" "));
    let out = process::run_bounded_with(
        std::process::Command::new(&path)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C"),
        input,
        TOOL_TIMEOUT,
        16 << 20,
    )
    .map_err(|e| match e {
        process::RunError::Io(e) => HostError::Io(e),
        t @ process::RunError::Timeout(_) => HostError::Command {
            command: command(),
            stderr: t.to_string(),
        },
    })?;
    if out.truncated {
        return Err(HostError::Command {
            command: command(),
            stderr: "printed more than 16 MiB".into(),
        });
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HostError::Command {
            command: command(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
