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
        let mut rec = banger::store::VmRecord::new(
            &format!("vm-{i}"),
            "img",
            "",
            1,
            256,
            1 << 30,
            false,
            Default::default(),
        );
        rec.id = id.clone();
        rec.created_at_unix = i;
        store.put_vm(&rec).expect("put");
        writeln!(out, "{id}").unwrap();
        out.flush().unwrap();
    }
}
