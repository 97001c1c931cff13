//! `banger vm run`: the arguments become one [`RunSpec`], sent as one call;
//! the daemon does the run (`daemon::run`). Here: the spec line, progress,
//! the command's output, its stdin, terminal and signals once it starts,
//! and the patch written where it was asked for.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::exec::{forward_signals, pump_stdin, terminal, Phase, RawMode};
use super::progress::ProgressView;
use super::render::CliError;
use super::vm::{ours, spec, RunArgs, WorkspaceArgs};
use super::{client, out, style, Ctx};
use crate::protocol::cli::{
    Event, Input, Reply, Request, RunCommand, RunSpec, WarmSpec, WorkspaceSpec,
};
use crate::size::format_size;

/// An interactive shell: bash when the image has it, else sh.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

/// `vm run`.
pub async fn run(ctx: &Ctx, a: RunArgs) -> Result<u8, CliError> {
    check_flags(&a)?;
    let workspace = match &a.path {
        Some(p) => {
            let spec = ws_spec(p, &a.ws, None)?;
            if a.ws.dry_run {
                return dry_run(ctx, &spec).await;
            }
            Some(spec)
        }
        None if a.ws.dry_run => {
            return Err(CliError::usage(
                "invalid flags",
                "--dry-run needs a repository path",
            ))
        }
        None => None,
    };
    let (command, forward) = command(&a)?;
    let run = RunSpec {
        create: spec(
            ctx,
            &a.create,
            workspace.as_ref().map(|w| Path::new(w.path.as_str())),
        )?,
        workspace,
        no_bootstrap: a.no_bootstrap,
        warm: a.warm.clone().map(|command| WarmSpec {
            command,
            key_files: a.warm_key.clone(),
        }),
        command,
        rm: a.rm,
        export_patch: a.export_patch.as_deref().map(absolute).transpose()?,
    };
    call(ctx, run, forward).await
}

fn check_flags(a: &RunArgs) -> Result<(), CliError> {
    let bad = |m: &str| Err(CliError::usage("invalid flags", m.to_string()));
    if a.detach && a.rm {
        return bad(
            "-d (leave running) and --rm (delete afterwards) contradict each other; pick one",
        );
    }
    if a.detach && !a.command.is_empty() {
        return bad("-d does not take a command; use `banger vm run -d` then `banger vm exec <name> -- <cmd>`");
    }
    if a.export_patch.is_some() && (a.path.is_none() || a.detach) {
        return bad("--export-patch needs a repository path and a command (it writes the workspace's changes when the command ends)");
    }
    Ok(())
}

/// The command (an interactive shell when none is given; none with `-d`)
/// and whether stdin is forwarded to it.
fn command(a: &RunArgs) -> Result<(Option<RunCommand>, bool), CliError> {
    if a.detach {
        return Ok((None, false));
    }
    let mut o = a.exec.opts(false);
    let argv = if a.command.is_empty() {
        o.tty = o.tty || std::io::stdin().is_terminal();
        vec!["sh".into(), "-c".into(), SHELL.into()]
    } else {
        a.command.clone()
    };
    let (forward, tty) = terminal(&o)?;
    Ok((
        Some(RunCommand {
            argv,
            env: o.env,
            cwd: o.cwd,
            tty,
            stdin: forward,
        }),
        forward,
    ))
}

fn absolute(p: &str) -> Result<String, CliError> {
    let p = Path::new(p);
    Ok(if p.is_absolute() {
        p.display().to_string()
    } else {
        std::env::current_dir()
            .map_err(|e| CliError::usage("invalid path", e.to_string()))?
            .join(p)
            .display()
            .to_string()
    })
}

/// The wire spec of a workspace from flags (path made absolute).
pub fn ws_spec(
    path: &str,
    ws: &WorkspaceArgs,
    from: Option<(String, String)>,
) -> Result<WorkspaceSpec, CliError> {
    let mode = ws
        .mode
        .parse()
        .map_err(|e: String| CliError::usage("invalid value", format!("--mode: {e}")))?;
    Ok(WorkspaceSpec {
        path: absolute(path)?,
        mode,
        include_untracked: ws.include_untracked,
        from,
        keep_ignored: false,
    })
}

/// `--dry-run`: what would ship, read on the host by the daemon (no VM is
/// made), printed.
pub async fn dry_run(ctx: &Ctx, spec: &WorkspaceSpec) -> Result<u8, CliError> {
    let mut c = client::connect(&ctx.layout, true).await?;
    let req = Request::WorkspacePlan(spec.clone());
    match client::request(&mut c, &ctx.layout, req, |_| {}).await? {
        Reply::Plan { text, notice } => {
            if let Some(n) = notice {
                eprintln!("{}", style::yellow(ctx.style.stderr, &n));
            }
            out(&text)?;
            Ok(0)
        }
        other => Err(client::unexpected(other)),
    }
}

/// What the client holds while the run streams.
struct View {
    progress: ProgressView,
    started: Arc<AtomicBool>,
    /// Stdin waits for the command (before, a Ctrl-C must not queue
    /// behind it).
    forward: Option<mpsc::Sender<Input>>,
    tty: bool,
    raw: Option<RawMode>,
    patch: Option<PatchFile>,
    acks: mpsc::Sender<Input>,
    error: Option<CliError>,
}

impl View {
    fn event(&mut self, e: Event) {
        match e {
            Event::Spec {
                vcpu,
                memory_mib,
                disk_bytes,
                nat,
                from,
            } => self.progress.suspend_line(format!(
                "spec: {vcpu} vcpu | {memory_mib} MiB | {} disk{}{}",
                format_size(disk_bytes),
                if nat { " | nat" } else { "" },
                from.map(|f| format!(" | from snapshot {f}"))
                    .unwrap_or_default()
            )),
            Event::CommandStarted => {
                self.progress.finish();
                self.progress = ProgressView::plain();
                self.started.store(true, Ordering::SeqCst);
                if self.tty {
                    match RawMode::enter() {
                        Ok(r) => self.raw = Some(r),
                        Err(e) => eprintln!("banger: {}", e.message),
                    }
                }
                if let Some(tx) = self.forward.take() {
                    pump_stdin(tx);
                }
            }
            Event::Patch(d) => {
                if let Some(p) = &mut self.patch {
                    p.write(&d);
                }
            }
            Event::PatchDone => {
                let Some(p) = self.patch.take() else { return };
                let error = match p.finish() {
                    Ok((file, bytes)) => {
                        eprintln!(
                            "banger: wrote the workspace's changes to {file} ({bytes} bytes)"
                        );
                        None
                    }
                    Err(e) => {
                        let m = e.message.clone();
                        self.error = Some(e);
                        Some(m)
                    }
                };
                let acks = self.acks.clone();
                tokio::spawn(async move { acks.send(Input::PatchSaved { error }).await });
            }
            other => self.progress.event(other),
        }
    }
}

/// The patch being written: a temporary name next to the file, then
/// fsync and rename.
struct PatchFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Result<std::fs::File, std::io::Error>,
    bytes: u64,
}

impl PatchFile {
    fn create(path: &str) -> PatchFile {
        let path = PathBuf::from(path);
        let tmp = path.with_file_name(format!(
            ".{}.partial",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let file = std::fs::File::create(&tmp);
        PatchFile {
            path,
            tmp,
            file,
            bytes: 0,
        }
    }

    fn write(&mut self, d: &[u8]) {
        self.bytes += d.len() as u64;
        if let Ok(f) = &mut self.file {
            if let Err(e) = f.write_all(d) {
                self.file = Err(e);
            }
        }
    }

    fn finish(self) -> Result<(String, u64), CliError> {
        let parent = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let done = self
            .file
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::rename(&self.tmp, &self.path))
            .and_then(|_| crate::fsutil::sync_dir(&parent));
        match done {
            Ok(()) => Ok((self.path.display().to_string(), self.bytes)),
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                Err(CliError::local(
                    "cannot write",
                    format!("{}: {e}", self.path.display()),
                ))
            }
        }
    }
}

/// The one call: events rendered, inputs forwarded, the answer rendered.
async fn call(ctx: &Ctx, run: RunSpec, forward: bool) -> Result<u8, CliError> {
    let tty = run.command.as_ref().is_some_and(|c| c.tty.is_some());
    let rm = run.rm;
    // A file that cannot be written is refused before the VM is made.
    let patch = match run.export_patch.as_deref().map(PatchFile::create) {
        Some(PatchFile {
            file: Err(e), tmp, ..
        }) => {
            return Err(CliError::usage(
                "cannot write",
                format!("--export-patch: {}: {e}", tmp.display()),
            ))
        }
        p => p,
    };
    let mut c = client::connect(&ctx.layout, true).await?;
    let (tx, rx) = mpsc::channel(64);
    let started = Arc::new(AtomicBool::new(false));
    let phase = Phase {
        started: started.clone(),
        before: if rm {
            "the VM is removed as soon as it is created"
        } else {
            "stopping after this step"
        },
    };
    forward_signals(tx.clone(), tty, Arc::default(), Some(phase));
    let mut view = View {
        progress: ProgressView::new(),
        started,
        forward: forward.then(|| tx.clone()),
        tty,
        raw: None,
        patch,
        acks: tx,
        error: None,
    };
    let r = c
        .call_with_inputs(
            crate::protocol::new_request_id(),
            Request::VmRun(Box::new(run)),
            |e| view.event(e),
            Some(rx),
        )
        .await
        .map_err(|e| client::client_error(e, &ctx.layout));
    view.raw.take();
    view.progress.finish();
    // A run that ended before its patch leaves no temporary file.
    if let Some(p) = view.patch.take() {
        let _ = std::fs::remove_file(&p.tmp);
    }
    let reply = r.map_err(ours)?;
    let patch_failed = view.error.take().map(|e| {
        eprintln!("{}", e.render(ctx.style.stderr));
    });
    match reply {
        Reply::Exit { code, message } => {
            if let Some(m) = message {
                eprintln!("banger: {m}");
            }
            // The changes are safe (the daemon said where), but not where
            // they were asked for: not a success.
            Ok(match patch_failed {
                Some(()) => 125,
                None => code.clamp(0, 255) as u8,
            })
        }
        Reply::Vm(v) => {
            out(&format!(
                "VM {n} is running at {}\n  shell:  banger vm exec -t {n} -- bash   (or banger vm ssh {n})\n  stop:   banger vm stop {n}\n  delete: banger vm delete {n}\n",
                v.ip.clone().unwrap_or_default(),
                n = v.name,
            ))?;
            Ok(0)
        }
        other => Err(ours(client::unexpected(other))),
    }
}
