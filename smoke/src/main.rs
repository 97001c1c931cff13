//! `smoke`: the pre-release check of a host. Drives the real `banger`,
//! `bangerd` and `bangerd-root` the way a user does, through a registry of
//! scenarios run in parallel jobs, inside a private XDG tree and network
//! namespace, and proves afterwards that nothing was left behind.
//!
//! Exit codes: 0 all passed (skips allowed when something passed), 1 a
//! scenario (or the preflight, or the cleanup proof) failed, 2 usage, 77
//! everything selected was skipped.

mod ctx;
mod netns;
mod process;
mod runner;
mod scenarios;

use std::path::PathBuf;

/// Parsed command line.
#[derive(Debug, Clone)]
pub struct Opts {
    pub list: bool,
    pub scenarios: Vec<String>,
    pub jobs: Option<usize>,
    pub bin_dir: PathBuf,
    pub cache: Option<PathBuf>,
    pub keep: bool,
}

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_ALL_SKIPPED: i32 = 77;

/// Most parallel jobs accepted (each runs VMs of 512 MiB).
pub const MAX_JOBS: usize = 8;

const USAGE: &str = "\
usage: smoke [--list] [--scenario A,B] [--jobs N] [--bin-dir DIR] [--cache DIR] [--keep]

  --list           print every scenario (name, class, description) and exit
  --scenario A,B   run only these scenarios (and the preflight)
  --jobs N         parallel jobs (default: min(cores, free GiB, 4); at most 8)
  --bin-dir DIR    where banger, bangerd and bangerd-root are (default /usr/local/bin)
  --cache DIR      XDG_CACHE_HOME for the run (kernels, image builds, downloads);
                   default: a fresh one in the run directory
  --keep           keep the run directory (/tmp/banger-smoke-<pid>) even when all passed

Runs as root (network namespaces, bridges, taps). Exit codes: 0 passed,
1 something failed, 2 usage, 77 everything selected was skipped.";

fn usage_error(msg: &str) -> ! {
    eprintln!("smoke: {msg}");
    eprintln!("{USAGE}");
    std::process::exit(EXIT_USAGE);
}

fn parse_args(args: Vec<String>) -> Opts {
    let mut o = Opts {
        list: false,
        scenarios: Vec::new(),
        jobs: None,
        bin_dir: PathBuf::from("/usr/local/bin"),
        cache: None,
        keep: false,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        // `--flag=value` as well as `--flag value`.
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> String {
            match inline.clone().or_else(|| it.next()) {
                Some(v) if !v.is_empty() => v,
                _ => usage_error(&format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "--list" | "-l" if inline.is_none() => o.list = true,
            "--keep" if inline.is_none() => o.keep = true,
            "--help" | "-h" if inline.is_none() => {
                println!("{USAGE}");
                std::process::exit(EXIT_OK);
            }
            "--scenario" | "-s" => {
                let v = value("--scenario");
                for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if !o.scenarios.iter().any(|s| s == n) {
                        o.scenarios.push(n.to_string());
                    }
                }
            }
            "--jobs" | "-j" => {
                let v = value("--jobs");
                match v.parse::<usize>() {
                    Ok(n) if n >= 1 => o.jobs = Some(n.min(MAX_JOBS)),
                    _ => usage_error(&format!("--jobs {v:?}: give a number of at least 1")),
                }
            }
            "--bin-dir" => o.bin_dir = PathBuf::from(value("--bin-dir")),
            "--cache" => o.cache = Some(PathBuf::from(value("--cache"))),
            other => usage_error(&format!("unknown argument {other:?}")),
        }
    }
    o
}

fn main() {
    let opts = parse_args(std::env::args().skip(1).collect());
    let registry = scenarios::registry();
    if opts.list {
        let w = registry.iter().map(|s| s.name.len()).max().unwrap_or(0);
        for s in &registry {
            println!("{:<w$}  {:<7}  {}", s.name, s.class.as_str(), s.desc, w = w);
        }
        std::process::exit(EXIT_OK);
    }
    let unknown: Vec<&String> = opts
        .scenarios
        .iter()
        .filter(|n| !registry.iter().any(|s| s.name == n.as_str()))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
        eprintln!(
            "smoke: unknown scenario {}; `smoke --list` shows them all",
            names.join(", ")
        );
        std::process::exit(EXIT_USAGE);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "smoke: needs root (it creates a network namespace, and banger's helper makes bridges and taps in it); run it with sudo, or use --list"
        );
        std::process::exit(EXIT_USAGE);
    }
    let code = runner::run(opts, registry);
    std::process::exit(code);
}
