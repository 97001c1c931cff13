//! The readiness point, a restored guest's hand-over, resuming
//! interrupted boots, and the guest's host key.

use super::*;

/// What the `boot` stage says about a readiness answer.
pub(super) fn ready_detail(r: &banger_agent::api::Readiness) -> String {
    match r.ready_at_s {
        Some(at) if at.is_finite() && at >= 0.0 => {
            format!("ready at guest uptime {at:.1}s (waited {} ms)", r.waited_ms)
        }
        _ => format!("ready (no boot to wait for; waited {} ms)", r.waited_ms),
    }
}

/// Why the readiness point was not reached.
pub enum ReadyError {
    /// The agent stopped answering altogether (a stuck guest).
    Stuck(OpError),
    Failed(OpError),
}

impl From<ReadyError> for OpError {
    fn from(e: ReadyError) -> OpError {
        match e {
            ReadyError::Stuck(e) | ReadyError::Failed(e) => e,
        }
    }
}

/// Waits until the guest is ready for commands (the readiness contract:
/// its boot can no longer change a command's world), until `deadline`.
/// A VMM that exits meanwhile, or a guest that does not get there in time,
/// is an error with the serial console's last lines.
pub async fn wait_ready(
    ctx: &Ctx,
    rec: &VmRecord,
    agent: &AgentSession,
    pid: u32,
    deadline: tokio::time::Instant,
) -> Result<banger_agent::api::Readiness, ReadyError> {
    let paths = ctx.layout.vm(&rec.id);
    let not_ready = |why: String| {
        OpError::failed(format!(
            "the guest of {} did not finish booting: {why}; the serial console ended with:\n{}",
            rec.name,
            log_tail(&paths.serial_log(), 15)
        ))
    };
    loop {
        // One answer per at most 30 s, so a session lost meanwhile is
        // noticed and asked again.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(ReadyError::Failed(not_ready(format!(
                "banger-ready.service had not run after {:?}",
                ctx.timeouts.boot
            ))));
        }
        let ask = left.min(Duration::from_secs(30));
        let r = tokio::select! {
            // A VM made for one command (`vm run --rm`) is never reported
            // running: it needs no sshd.
            r = agent.ready(false, !rec.ephemeral, ask) => r,
            _ = crate::host::process::wait_exit_forever(pid) => {
                return Err(ReadyError::Failed(not_ready(format!("the {} process exited", rec.vmm.as_str()))));
            }
        };
        match r {
            Ok(r) if r.ready => return Ok(r),
            Ok(_) => {}
            Err(crate::guest::session::AgentError::Refused(e)) => {
                return Err(ReadyError::Failed(not_ready(format!(
                    "its agent cannot say ({}); rebuild the image (banger image build {} --rebuild)",
                    sanitize_token(&e, 80),
                    rec.image
                ))))
            }
            // Silent through its whole wait and the grace after it: the
            // guest is stuck, not slow (a slow one answers "not yet").
            Err(e @ crate::guest::session::AgentError::Timeout(_)) => {
                return Err(ReadyError::Stuck(not_ready(format!(
                    "its agent stopped answering ({e})"
                ))))
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(ReadyError::Failed(not_ready(e.to_string())))
            }
            Err(e) => {
                tracing::debug!(vm = %rec.name, "asking the agent for readiness: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The `restore` stage: loads the snapshot's memory into the waiting VMM,
/// then the guest takes its own identity (RNG reseeded, clock, name,
/// addresses, machine-id, SSH host key) before anything may run in it.
pub(super) async fn restore_guest(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
    snap: &crate::store::SnapshotRecord,
    pid: u32,
    agent: &AgentSession,
    stages: &mut Stages,
) -> Result<(), OpError> {
    let paths = ctx.layout.vm(&rec.id);
    stages
        .begin("restore", format!("snapshot {}", snap.name))
        .await;
    let exited = || async {
        crate::host::process::wait_exit_forever(pid).await;
        OpError::failed(format!(
            "{} exited while restoring snapshot {}:\n{}",
            rec.vmm.as_str(),
            snap.name,
            log_tail(&paths.vmm_log(), 5)
        ))
    };
    let load_ms = tokio::select! {
        biased;
        e = exited() => return Err(e),
        r = crate::ops::snapshots::load(&paths, snap) => r?,
    };
    let identity = crate::ops::snapshots::identity(ctx, rec, snap)?;
    let answered = tokio::select! {
        e = exited() => return Err(e),
        r = async {
            let t = Instant::now();
            agent.wait_up(Duration::from_secs(30)).await?;
            let session_ms = t.elapsed().as_millis();
            let ack = agent.reidentify(identity, Duration::from_secs(60)).await?;
            let identity_ms = t.elapsed().as_millis() - session_ms;
            let health = agent.health(Duration::from_secs(30)).await?;
            Ok::<_, crate::guest::session::AgentError>((ack, health, session_ms, identity_ms))
        } => r,
    };
    let (ack, health, session_ms, identity_ms) = answered.map_err(|e| {
        OpError::failed(format!(
            "the restored guest's agent did not answer: {e}; is snapshot {} from an image whose agent knows restores? (take it again)",
            snap.name
        ))
    })?;
    if !ack.ok {
        // Clones must never share keys or random state: not usable.
        let detail: String = ack
            .detail
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(300)
            .collect();
        return Err(OpError::failed(format!(
            "the restored guest could not take its own identity: {detail}"
        )));
    }
    check_protocol(rec, &health)?;
    // A snapshot of a settled guest is ready at once; one taken while the
    // guest still booted (a user's `vm snapshot`) finishes its boot first.
    let ready = wait_ready(
        ctx,
        rec,
        agent,
        pid,
        tokio::time::Instant::now() + ctx.timeouts.boot,
    )
    .await?;
    rec.restore_pending = false;
    trust_ca(ctx, rec, agent).await?;
    accept_guest(ctx, vm, rec, health)?;
    crate::ops::snapshots::mark_used(ctx, snap);
    stages
        .end(format!(
            "memory {load_ms} ms, agent {session_ms} ms, identity {identity_ms} ms, ready {} ms; now {} at {}",
            ready.waited_ms,
            rec.name,
            rec.ip.as_deref().unwrap_or("?")
        ))
        .await;
    stages.ready().await;
    Ok(())
}

/// A VM with secrets trusts its own CA before anything runs in it (every
/// boot and restore: a clone's CA is its own). Nothing to do without.
pub(super) async fn trust_ca(
    ctx: &Ctx,
    rec: &VmRecord,
    agent: &AgentSession,
) -> Result<(), OpError> {
    if rec.secrets.is_empty() {
        return Ok(());
    }
    let s = ctx.vault.get(&rec.id).ok_or_else(|| {
        OpError::failed(format!(
            "VM {} has secrets but banger no longer has their values ({} is gone); delete it and make it again with --secret",
            rec.name,
            ctx.layout.state_dir.join("secrets").display()
        ))
    })?;
    let argv = vec![
        "sh".to_string(),
        "-c".into(),
        crate::ops::egress::secrets::TRUST_SCRIPT.into(),
        "sh".into(),
        s.ca_cert_pem.trim().to_string(),
        format!("# banger egress CA of VM {}", rec.id),
    ];
    crate::ops::workspace::guest_step(agent, argv, "trusting the VM's egress CA").await
}

/// The agent answered: checks what it says (it is the guest's word) and
/// records the VM as running. The boot id is kept only as a UUID-like
/// token; anything else is the guest's problem, not a panic or a stored
/// string of its choosing.
pub(super) fn accept_guest(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: &mut VmRecord,
    mut health: banger_agent::api::Healthz,
) -> Result<banger_agent::api::Healthz, OpError> {
    check_protocol(rec, &health)?;
    health.boot_id = sanitize_token(&health.boot_id, 64);
    health.init = sanitize_token(&health.init, 32);
    rec.boot_id = Some(health.boot_id.clone());
    rec.state = VmState::Running;
    persist(ctx, vm, rec)?;
    refresh_ssh_config(ctx);
    Ok(health)
}

/// The image's agent must speak this banger's protocol.
pub(super) fn check_protocol(
    rec: &VmRecord,
    health: &banger_agent::api::Healthz,
) -> Result<(), OpError> {
    if health.protocol != banger_agent::proto::VERSION {
        return Err(OpError::failed(format!(
            "the image's agent speaks protocol {}, banger {}; rebuild the image (banger image build {} --rebuild)",
            health.protocol,
            banger_agent::proto::VERSION,
            rec.image
        )));
    }
    Ok(())
}

/// At most `max` characters of `s` that are ASCII letters, digits or `-`
/// (`?` when none are).
pub fn sanitize_token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(max)
        .collect();
    if t.is_empty() {
        "?".into()
    } else {
        t
    }
}

/// Starts again a VM whose create or start a daemon crash interrupted
/// before its VMM was recorded: whatever that attempt launched (a VMM the
/// helper knows by this VM's id) or took goes first, so a disk never has
/// two VMMs.
pub async fn restart_interrupted(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    mut rec: VmRecord,
    stages: &mut Stages,
) -> (VmRecord, Result<(), OpError>) {
    if let Err(e) = kill_vmm(ctx, &rec).await {
        rec.state = VmState::Error;
        rec.last_error = Some(e.to_string());
        let _ = persist(ctx, vm, &rec);
        return (rec, Err(e));
    }
    release(ctx, vm, &mut rec).await;
    start(ctx, vm, rec, stages).await
}

/// Finishes a boot that a daemon crash interrupted while its VMM ran:
/// waits (bounded) for the agent and records the VM as running, or kills
/// it and leaves it in `error`.
pub async fn resume_boot(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    mut rec: VmRecord,
    pid: u32,
) -> (VmRecord, Result<(), OpError>) {
    let paths = ctx.layout.vm(&rec.id);
    let r = async {
        let agent = vm.start_agent(channel_of(rec.vmm, &paths)).await?;
        let health = tokio::select! {
            h = async {
                agent.wait_up(ctx.timeouts.boot).await?;
                agent.health(Duration::from_secs(30)).await
            } => h.map_err(|e| OpError::failed(format!("the guest agent did not answer after a daemon restart: {e}")))?,
            _ = crate::host::process::wait_exit_forever(pid) => {
                return Err(OpError::failed("the VMM exited during the resumed boot"));
            }
        };
        check_protocol(&rec, &health)?;
        wait_ready(ctx, &rec, &agent, pid, tokio::time::Instant::now() + ctx.timeouts.boot).await?;
        trust_ca(ctx, &rec, &agent).await?;
        accept_guest(ctx, vm, &mut rec, health).map(drop)
    }
    .await;
    match r {
        Ok(()) => {
            tracing::info!(vm = %rec.name, "finished a boot the daemon had been stopped in");
            (rec, Ok(()))
        }
        Err(e) => {
            fail_and_release(ctx, vm, &mut rec, &e).await;
            (rec, Err(e))
        }
    }
}

/// Learns the guest's SSH host key from its agent (waiting, bounded, for
/// sshd's first start), pins it for `<name>.vm` and the address, and
/// records it. Only `vm ssh` needs this: commands go through the agent.
pub async fn pin_host_key(
    ctx: &Ctx,
    agent: &AgentSession,
    rec: &VmRecord,
    timeout: Duration,
) -> Result<String, OpError> {
    let deadline = Instant::now() + timeout;
    let ip = rec
        .ip
        .clone()
        .ok_or_else(|| OpError::failed("the VM has no address"))?;
    loop {
        let keys = agent
            .host_keys(Duration::from_secs(5))
            .await
            .unwrap_or_default();
        let ready = match keys.iter().find(|k| k.algorithm == "ssh-ed25519") {
            Some(k) => {
                let ports = agent
                    .ports(Duration::from_secs(5))
                    .await
                    .unwrap_or_default();
                ports
                    .iter()
                    .any(|p| p.port == 22)
                    .then(|| crate::guest::ssh::host_key_line(&k.algorithm, &k.key))
                    .transpose()?
            }
            None => None,
        };
        if let Some(host_key) = ready {
            let files = SshFiles::of(&ctx.layout);
            if rec.host_key.as_deref() != Some(host_key.as_str()) || !files.is_pinned(&rec.name) {
                files
                    .pin(&rec.name, &ip, &host_key)
                    .map_err(|e| OpError::failed(format!("pinning the host key: {e}")))?;
            }
            return Ok(host_key);
        }
        if Instant::now() > deadline {
            return Err(OpError::failed(format!(
                "sshd did not come up in VM {} within {timeout:?} (the agent answers: use banger vm exec {} -- <cmd>)",
                rec.name, rec.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
