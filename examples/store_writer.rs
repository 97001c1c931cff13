//! Test fixture (used by `tests/store_crash.rs`): writes VM records to a
//! store in a loop, printing each id after its commit returned, until killed.
use std::io::Write;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: store_writer <state.redb>");
    let store = banger::store::Store::open(std::path::Path::new(&path)).expect("open store");
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let id = format!("{i:016x}");
        let rec = banger::store::VmRecord {
            id: id.clone(),
            name: format!("vm-{i}"),
            state: banger::protocol::cli::VmState::Stopped,
            image: "img".into(),
            kernel: String::new(),
            vcpu: 1,
            memory_mib: 256,
            disk_bytes: 1 << 30,
            nat: false,
            ip: None,
            mac: None,
            tap: None,
            created_at_unix: i,
            last_error: None,
        };
        store.put_vm(&rec).expect("put");
        writeln!(out, "{id}").unwrap();
        out.flush().unwrap();
    }
}
