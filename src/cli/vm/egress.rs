//! Egress flags, a repository's `.banger.toml`, and `vm egress`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::super::render::{self, CliError, Table};
use super::super::{client, out, Ctx};
use super::EgressArgs;
use crate::domain::egress::{EgressChange, EgressPolicy, EgressView, SecretSpec};
use crate::protocol::cli::{Reply, Request};

/// A repository's own settings file (at its top level).
pub const REPO_FILE: &str = ".banger.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoFile {
    egress: Option<RepoEgress>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoEgress {
    /// `deny` (the default of a file that has `[egress]`) or `open`.
    default: Option<String>,
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default)]
    allow_nets: Vec<String>,
}

/// The top of the git repository holding `path`, if any.
fn repo_top(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .find(|d| d.join(".git").exists())
        .map(Path::to_path_buf)
}

/// The policy a repository asks for in its `.banger.toml`, and the file.
fn repo_policy(path: &Path) -> Result<Option<(EgressPolicy, PathBuf)>, CliError> {
    let Some(file) = repo_top(path).map(|t| t.join(REPO_FILE)) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CliError::usage(
                "bad repository settings",
                format!("reading {}: {e}", file.display()),
            ))
        }
    };
    let bad = |m: String| {
        CliError::usage(
            "bad repository settings",
            format!("{}: {m}", file.display()),
        )
    };
    let raw: RepoFile = toml::from_str(&text).map_err(|e| bad(e.to_string().trim().to_string()))?;
    let Some(eg) = raw.egress else {
        return Ok(None);
    };
    match eg.default.as_deref() {
        None | Some("deny") => {}
        Some("open") => return Ok(None),
        Some(o) => {
            return Err(bad(format!(
                "egress.default: {o:?} is not \"deny\" or \"open\""
            )))
        }
    }
    let mut p = EgressPolicy::default();
    p.allow(&eg.allow_hosts, &eg.allow_nets).map_err(bad)?;
    Ok(Some((p, file)))
}

/// One `--secret NAME@HOST[=env:VAR|=file:PATH]`, its value read here
/// (the user's environment and files): from `=...`, else `$NAME`, else the
/// config's `[secrets] NAME = "file:..."|"env:..."`.
fn secret(
    raw: &str,
    configured: &std::collections::BTreeMap<String, String>,
) -> Result<SecretSpec, CliError> {
    let bad = |m: String| CliError::usage("invalid value", format!("--secret {raw}: {m}"));
    let (target, source) = match raw.split_once('=') {
        Some((t, s)) => (t, Some(s.to_string())),
        None => (raw, None),
    };
    let (name, host) = target
        .split_once('@')
        .ok_or_else(|| bad("give NAME@HOST, e.g. GITHUB_TOKEN@api.github.com".into()))?;
    let source = source
        .or_else(|| std::env::var(name).ok().map(|_| format!("env:{name}")))
        .or_else(|| configured.get(name).cloned())
        .ok_or_else(|| {
            bad(format!(
                "no value: set {name} in the environment, add =file:PATH or =env:VAR, or [secrets] {name} = \"file:PATH\" in the config"
            ))
        })?;
    let value = if let Some(v) = source.strip_prefix("env:") {
        std::env::var(v).map_err(|_| bad(format!("${v} is not set")))?
    } else if let Some(f) = source.strip_prefix("file:") {
        let t = std::fs::read_to_string(f).map_err(|e| bad(format!("reading {f}: {e}")))?;
        t.trim_end_matches(['\n', '\r']).to_string()
    } else {
        return Err(bad(format!(
            "{source:?}: the value comes from env:VAR or file:PATH (never the command line)"
        )));
    };
    SecretSpec {
        name: name.into(),
        host: host.into(),
        value,
    }
    .checked()
    .map_err(bad)
}

/// The policy and secrets of a new VM: the flags', merged with the
/// repository's `.banger.toml` (`repo`: the path given to `vm run`).
/// Prints where the policy came from. `--egress open` drops the files'
/// and flags' policy (and takes no secrets).
pub fn policy(
    a: &EgressArgs,
    repo: Option<&Path>,
    configured: &std::collections::BTreeMap<String, String>,
) -> Result<(Option<EgressPolicy>, Vec<SecretSpec>), CliError> {
    let secrets = a
        .secret
        .iter()
        .map(|s| secret(s, configured))
        .collect::<Result<Vec<_>, _>>()?;
    let flagged = a.egress.as_deref() == Some("deny")
        || !a.allow_host.is_empty()
        || !a.allow_net.is_empty()
        || !secrets.is_empty();
    if a.egress.as_deref() == Some("open") {
        if flagged {
            return Err(CliError::usage(
                "invalid flags",
                "--egress open drops the policy; --allow-host, --allow-net and --secret need --egress deny (or nothing)",
            ));
        }
        return Ok((None, vec![]));
    }
    let from_repo = match repo {
        Some(r) => repo_policy(r)?,
        None => None,
    };
    if !flagged && from_repo.is_none() {
        return Ok((None, vec![]));
    }
    let (mut p, mut sources) = match from_repo {
        Some((p, file)) => (p, vec![file.display().to_string()]),
        None => (EgressPolicy::default(), vec![]),
    };
    let secret_hosts: Vec<String> = secrets.iter().map(|s| s.host.clone()).collect();
    p.allow(&[a.allow_host.clone(), secret_hosts].concat(), &a.allow_net)
        .map_err(|m| CliError::usage("invalid value", m))?;
    if flagged {
        sources.push("flags".into());
    }
    eprintln!("egress: {} (from {})", p.summary(), sources.join(" + "));
    for s in &secrets {
        eprintln!(
            "secret: {} for {} (the guest sees a placeholder)",
            s.name, s.host
        );
    }
    Ok((Some(p), secrets))
}

/// `vm set`'s change of policy.
pub fn change(a: &EgressArgs, disallow: &[String]) -> Result<EgressChange, CliError> {
    if !a.secret.is_empty() {
        return Err(CliError::usage(
            "invalid flags",
            "a VM's secrets are given when it is made (vm create/run --secret): its CA and placeholders are its own",
        ));
    }
    Ok(EgressChange {
        deny: a.egress.as_deref().map(|m| m == "deny"),
        allow_hosts: a.allow_host.clone(),
        allow_nets: a.allow_net.clone(),
        disallow_hosts: disallow.to_vec(),
    })
}

async fn fetch(ctx: &Ctx, name: &str) -> Result<EgressView, CliError> {
    let mut c = client::connect(&ctx.layout, true).await?;
    let req = Request::VmEgress {
        name: name.to_string(),
    };
    match client::request(&mut c, &ctx.layout, req, |_| {}).await? {
        Reply::Egress(v) => Ok(v),
        other => Err(client::unexpected(other)),
    }
}

fn table(v: &EgressView) -> String {
    let mut s = match &v.policy {
        None => format!("{}: no egress policy\n", v.vm),
        Some(p) => format!("{}: {}\n", v.vm, p.summary()),
    };
    if v.refused.is_empty() {
        s += "nothing refused\n";
        return s;
    }
    let mut t = Table::new(["KIND", "TARGET", "COUNT", "LAST"]);
    for r in &v.refused {
        t.row(vec![
            r.kind.clone(),
            r.target(),
            r.count.to_string(),
            render::age(r.last_unix),
        ]);
    }
    s + &t.render()
}

/// `vm egress NAME [--json] [--follow]`.
pub async fn show(ctx: &Ctx, name: &str, json: bool, follow: bool) -> Result<u8, CliError> {
    crate::names::validate_vm_name(name)
        .map_err(|e| CliError::usage("invalid name", e.to_string()))?;
    let v = fetch(ctx, name).await?;
    if !follow {
        out(&if json { render::json(&v) } else { table(&v) })?;
        return Ok(0);
    }
    // Follow: each refusal once, and again whenever its count moves.
    let mut seen = std::collections::HashMap::new();
    let mut v = v;
    loop {
        for r in v.refused.iter().rev() {
            let key = (r.kind.clone(), r.name.clone(), r.address.clone());
            if seen.get(&key) == Some(&r.count) {
                continue;
            }
            seen.insert(key, r.count);
            out(&if json {
                format!("{}\n", serde_json::to_string(r).unwrap_or_default())
            } else {
                format!("refused {} {} (x{})\n", r.kind, r.target(), r.count)
            })?;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        v = fetch(ctx, name).await?;
    }
}
