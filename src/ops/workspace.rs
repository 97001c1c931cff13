//! Workspaces in a running VM: shipping a host repository in (the caller
//! runs it as an operation on the VM, so it waits for the others and they
//! for it) and exporting the guest's edits as a patch.

use crate::guest::text::shown;
use tokio::sync::mpsc;

use super::vms::require_running;
use super::Ctx;
use crate::domain::Event;
use crate::guest::exec::{ExecRequest, Feed, Outcome};
use crate::guest::session::AgentSession;
use crate::ops::OpError;
use crate::store::model::now_unix;
use crate::store::{VmRecord, WorkspaceState};
use crate::workspace::WorkspaceSpec;
use crate::workspace::{self, archive, Options, WorkspaceError, GUEST_PATH};

/// How much of a failing guest step's output is kept for the error.
const KEEP: usize = 8 << 10;
/// A guest step (mkdir, git in the guest) that takes longer is given up:
/// a guest that never answers must not hold its VM's queue.
const STEP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);
/// The largest patch `workspace export` takes from a guest.
const EXPORT_MAX: u64 = 1 << 30;
/// The whole transfer of a workspace into the guest (or a patch out).
const TRANSFER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1800);

/// Runs a guest command without input; its output becomes the error.
pub(crate) async fn guest_step(
    agent: &AgentSession,
    argv: Vec<String>,
    what: &str,
) -> Result<(), OpError> {
    let req = ExecRequest::new(argv, "/");
    let (outcome, out, err) =
        tokio::time::timeout(STEP_DEADLINE, crate::guest::exec::output(agent, req, KEEP))
            .await
            .map_err(|_| {
                OpError::failed(format!(
                    "{what} in the guest did not finish within {STEP_DEADLINE:?}"
                ))
            })?
            .map_err(|e| OpError::failed(format!("{what} in the guest: {e}")))?;
    if outcome.code() != 0 {
        return Err(OpError::failed(format!(
            "{what} in the guest failed (exit {}): {}{}",
            outcome.code(),
            shown(String::from_utf8_lossy(&err).trim(), 4000, true),
            shown(String::from_utf8_lossy(&out).trim(), 4000, true)
        )));
    }
    Ok(())
}

/// Streams what `produce` writes (on a blocking thread, through a pipe:
/// never whole in memory) into a guest command's stdin, over TCP to the
/// guest's address (virtio-net is much faster than the agent channel for
/// bulk input under emulation).
async fn stream<F>(
    agent: &AgentSession,
    tcp_to: std::net::IpAddr,
    argv: Vec<String>,
    produce: F,
) -> Result<(), OpError>
where
    F: FnOnce(std::io::PipeWriter) -> Result<(), WorkspaceError> + Send + 'static,
{
    let pipe_err = |e: std::io::Error| OpError::failed(format!("creating a pipe: {e}"));
    let (reader, writer) = std::io::pipe().map_err(pipe_err)?;
    let reader =
        tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()).map_err(pipe_err)?;
    let producer = tokio::task::spawn_blocking(move || produce(writer));
    let req = ExecRequest::new(argv, "/");
    let (tx, mut rx) = mpsc::channel(64);
    let errors = tokio::spawn(async move {
        let mut tail = crate::guest::exec::Tail::new(KEEP);
        while let Some(e) = rx.recv().await {
            if let Event::Stderr(d) | Event::Stdout(d) = e {
                tail.push(&d);
            }
        }
        tail.0
    });
    let outcome = tokio::time::timeout(
        TRANSFER_DEADLINE,
        crate::guest::exec::run(agent, req, Feed::Tcp(tcp_to, reader), &tx),
    )
    .await
    .unwrap_or(Err(crate::guest::session::AgentError::Timeout(
        TRANSFER_DEADLINE,
    )));
    drop(tx);
    let produced = producer.await?;
    let guest_err = shown(
        String::from_utf8_lossy(&errors.await.unwrap_or_default()).trim(),
        4000,
        true,
    );
    let outcome =
        outcome.map_err(|e| OpError::failed(format!("transfer to the guest failed: {e}")))?;
    produced?;
    if outcome.code() != 0 {
        return Err(OpError::failed(format!(
            "unpacking in the guest failed (exit {}): {guest_err}",
            outcome.code()
        )));
    }
    Ok(())
}

/// Runs `f`, returning its output and how long it took.
async fn timed<F: std::future::Future>(f: F) -> (F::Output, std::time::Duration) {
    let t = std::time::Instant::now();
    let r = f.await;
    (r, t.elapsed())
}

/// Ships the repository into the VM and returns the state to record, and
/// how many files arrived.
pub async fn ship(
    ctx: &Ctx,
    agent: &AgentSession,
    rec: &VmRecord,
    spec: &WorkspaceSpec,
    events: &mpsc::Sender<Event>,
) -> Result<(WorkspaceState, u64), OpError> {
    require_running(rec)?;
    let path = std::path::PathBuf::from(&spec.path);
    if !path.is_absolute() {
        return Err(OpError::invalid(format!(
            "{} is not an absolute path",
            spec.path
        )));
    }
    let opts = Options::of(spec);
    let plan = tokio::task::spawn_blocking(move || workspace::inspect(&path, &opts)).await??;
    if let Some(n) = workspace::untracked_notice(&plan) {
        let _ = events.send(Event::Log(n)).await;
    }
    let started = std::time::Instant::now();
    let _ = events
        .send(Event::Stage {
            stage: "workspace".into(),
            detail: format!(
                "{} files ({}) to {GUEST_PATH}",
                plan.files.len(),
                plan.opts.mode.as_str()
            ),
            elapsed_ms: 0,
            done: false,
        })
        .await;
    let vmm_pid = rec.vmm_pid.unwrap_or(0);
    let tcp_to: std::net::IpAddr = rec
        .ip
        .as_deref()
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| OpError::failed("the VM has no address"))?;
    let transfer = async {
        let t0 = std::time::Instant::now();
        guest_step(
            agent,
            archive::begin_argv(GUEST_PATH),
            "preparing the directory",
        )
        .await?;
        let t_begin = t0.elapsed();
        // Two streams at once (the guest has the CPUs to take both): the
        // working tree, and the .git built on the host.
        let scratch = ctx.layout.cache_dir.join("tmp");
        let (p1, p2) = (plan.clone(), plan.clone());
        let tree = timed(stream(
            agent,
            tcp_to,
            archive::untar_argv(GUEST_PATH, "."),
            move |w| archive::write_worktree(&p1, w),
        ));
        let git = timed(stream(
            agent,
            tcp_to,
            archive::untar_argv(GUEST_PATH, ".git"),
            move |w| archive::write_git_dir(&p2, w, &scratch),
        ));
        let ((a, t_tree), (b, t_git)) = tokio::join!(tree, git);
        a?;
        b?;
        let t1 = std::time::Instant::now();
        guest_step(
            agent,
            archive::finish_argv(GUEST_PATH, spec.keep_ignored),
            "finishing",
        )
        .await?;
        tracing::info!(
            vm = %rec.name,
            begin_ms = t_begin.as_millis() as u64,
            tree_ms = t_tree.as_millis() as u64,
            git_ms = t_git.as_millis() as u64,
            finish_ms = t1.elapsed().as_millis() as u64,
            "workspace transfer"
        );
        Ok::<(), OpError>(())
    };
    tokio::select! {
        r = transfer => r?,
        _ = crate::host::process::wait_exit_forever(vmm_pid) => {
            return Err(OpError::failed("the VM stopped during the transfer"));
        }
    }
    let _ = events
        .send(Event::Stage {
            stage: "workspace".into(),
            detail: format!(
                "{} at {}",
                plan.branch,
                &plan.head[..12.min(plan.head.len())]
            ),
            elapsed_ms: started.elapsed().as_millis() as u64,
            done: true,
        })
        .await;
    Ok((
        WorkspaceState {
            guest_path: GUEST_PATH.into(),
            host_path: plan.root.display().to_string(),
            head: plan.head.clone(),
            branch: plan.branch.clone(),
            mode: plan.opts.mode,
            include_untracked: plan.opts.include_untracked,
            pinned: plan.opts.from.is_some(),
            prepared_at_unix: now_unix(),
        },
        plan.files.len() as u64,
    ))
}

/// `vm workspace export`: the patch streams out as stdout events.
pub async fn export(
    agent: &AgentSession,
    rec: &VmRecord,
    base: Option<String>,
    events: mpsc::Sender<Event>,
) -> Result<(), OpError> {
    require_running(rec)?;
    let name = &rec.name;
    let ws = rec.workspace.clone().ok_or_else(|| {
        OpError::invalid(format!(
            "VM {name} has no workspace; prepare one with: banger vm workspace prepare {name} <path>"
        ))
    })?;
    let base = match base {
        Some(b) if (4..=64).contains(&b.len()) && b.chars().all(|c| c.is_ascii_hexdigit()) => b,
        Some(b) => {
            return Err(OpError::invalid(format!(
                "--base-commit {b:?} is not a commit hash"
            )))
        }
        None => "HEAD".into(),
    };
    let req = ExecRequest::new(archive::export_argv(&ws.guest_path, &base), "/");
    let (tx, mut rx) = mpsc::channel(64);
    let fwd_events = events.clone();
    // The patch is the guest's word: bounded in size and time.
    let too_big = std::sync::Arc::new(tokio::sync::Notify::new());
    let flag = too_big.clone();
    let forward = tokio::spawn(async move {
        let mut err = crate::guest::exec::Tail::new(KEEP);
        let mut total = 0u64;
        while let Some(e) = rx.recv().await {
            match e {
                Event::Stdout(d) => {
                    total += d.len() as u64;
                    if total > EXPORT_MAX {
                        flag.notify_one();
                        break;
                    }
                    let _ = fwd_events.send(Event::Stdout(d)).await;
                }
                Event::Stderr(d) => err.push(&d),
                _ => {}
            }
        }
        err.0
    });
    let outcome = tokio::select! {
        r = tokio::time::timeout(
            TRANSFER_DEADLINE,
            crate::guest::exec::run(agent, req, Feed::<tokio::io::Empty>::None, &tx),
        ) => r.unwrap_or(Err(crate::guest::session::AgentError::Timeout(TRANSFER_DEADLINE))),
        _ = too_big.notified() => Err(crate::guest::session::AgentError::Protocol(format!(
            "the guest's patch is larger than {} MiB; export it in the guest and copy it out",
            EXPORT_MAX >> 20
        ))),
    };
    drop(tx);
    let err = shown(
        String::from_utf8_lossy(&forward.await.unwrap_or_default()).trim(),
        4000,
        true,
    );
    match outcome.map_err(|e| OpError::failed(format!("export: {e}")))? {
        Outcome::Exited(s) if s.shell_code() == 0 => Ok(()),
        o => Err(OpError::failed(format!(
            "export failed in the guest (exit {}): {err}",
            o.code()
        ))),
    }
}

/// `--dry-run`: what a prepare of `spec` would ship, read on the host
/// (nothing is made): the plan as text, and the notice about untracked
/// files left out.
pub async fn plan(spec: WorkspaceSpec) -> Result<(String, Option<String>), OpError> {
    tokio::task::spawn_blocking(move || {
        let plan = workspace::inspect(std::path::Path::new(&spec.path), &Options::of(&spec))?;
        Ok((
            workspace::dry_run_text(&plan),
            workspace::untracked_notice(&plan),
        ))
    })
    .await?
}
