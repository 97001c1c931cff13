//! A writer killed with SIGKILL mid-stream loses nothing it committed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn sigkilled_writer_keeps_every_committed_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let writer = example("store_writer");
    assert!(
        writer.is_file(),
        "{} missing (cargo test builds examples)",
        writer.display()
    );
    for round in 0..3 {
        let mut child = Command::new(&writer)
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let want = 40 + round * 17;
        let mut committed = Vec::new();
        for _ in 0..want {
            committed.push(lines.next().unwrap().unwrap());
        }
        // Kill it while it is writing the next ones.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        let store = banger::store::Store::open(&path).expect("reopen after SIGKILL");
        for id in &committed {
            assert!(
                store.get_vm(id).unwrap().is_some(),
                "round {round}: committed record {id} is missing"
            );
        }
        let all = store.list_vms().unwrap();
        assert!(all.len() >= committed.len());
    }
}
