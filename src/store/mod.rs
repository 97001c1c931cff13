//! The state store: one redb file with tables for VMs, images, kernels and
//! meta (the schema version). Values are JSON records.
//!
//! [`Store::open`] creates and migrates; [`Store::open_read_only`] never
//! migrates and refuses every write. redb's lock is exclusive, so only one
//! process (the daemon) holds the file read-write; others ask the daemon.

pub mod codec;
pub mod migrations;
pub mod model;

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

pub use model::{ImageRecord, KernelRecord, SnapshotRecord, VmRecord, WorkspaceState};

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");
pub(crate) const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
pub(crate) const KERNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("kernels");
pub(crate) const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
pub(crate) const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");

/// Setting key: the image new VMs use when none is named.
pub const DEFAULT_IMAGE_KEY: &str = "default_image";

const SCHEMA_KEY: &str = "schema_version";

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state file {0} does not exist (it is created when the daemon first starts)")]
    Missing(PathBuf),
    #[error(
        "state file {0} is in use by another process (a running bangerd); ask the daemon instead"
    )]
    Locked(PathBuf),
    #[error("state file is schema v{found}, newer than this banger understands (v{known}); upgrade banger")]
    TooNew { found: u64, known: u64 },
    #[error("the store was opened read-only; writes are refused")]
    ReadOnly,
    #[error("record {key:?} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    #[error("state store: {0}")]
    Db(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.to_string()) }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl StoreError {
    fn from_open(path: &Path, e: redb::DatabaseError) -> StoreError {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_path_buf()),
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::NotFound =>
            {
                StoreError::Missing(path.to_path_buf())
            }
            other => StoreError::Db(format!("opening {}: {other}", path.display())),
        }
    }
}

enum Db {
    Rw(redb::Database),
    Ro(redb::ReadOnlyDatabase),
}

/// A handle to the state file.
pub struct Store {
    db: Db,
    path: PathBuf,
    /// Bumped by every write of a VM row: readers that keep a view of the
    /// VMs (the DNS server's name table) know when it is stale.
    vm_writes: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens (creating if needed) and migrates to the latest schema.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Db(format!("creating {}: {e}", dir.display())))?;
        }
        let db = redb::Database::create(path).map_err(|e| StoreError::from_open(path, e))?;
        let store = Store {
            db: Db::Rw(db),
            path: path.to_path_buf(),
            vm_writes: Default::default(),
        };
        store.migrate_to(migrations::latest_version())?;
        Ok(store)
    }

    /// Opens an existing file for reading only. Never migrates.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let db = redb::ReadOnlyDatabase::open(path).map_err(|e| StoreError::from_open(path, e))?;
        Ok(Store {
            db: Db::Ro(db),
            path: path.to_path_buf(),
            vm_writes: Default::default(),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rw(&self) -> Result<&redb::Database, StoreError> {
        match &self.db {
            Db::Rw(db) => Ok(db),
            Db::Ro(_) => Err(StoreError::ReadOnly),
        }
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        Ok(match &self.db {
            Db::Rw(db) => db.begin_read()?,
            Db::Ro(db) => db.begin_read()?,
        })
    }

    /// The schema version recorded in the file (0 for a file never migrated).
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        Ok(table.get(SCHEMA_KEY)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Applies every migration above the file's version up to `target`.
    /// Running it again is a no-op.
    pub fn migrate_to(&self, target: u64) -> Result<u64, StoreError> {
        let db = self.rw()?;
        let current = self.schema_version()?;
        let known = migrations::latest_version();
        if current > known {
            return Err(StoreError::TooNew {
                found: current,
                known,
            });
        }
        for m in migrations::MIGRATIONS
            .iter()
            .filter(|m| m.version > current && m.version <= target)
        {
            let txn = db.begin_write()?;
            (m.apply)(&txn)?;
            txn.open_table(META)?.insert(SCHEMA_KEY, m.version)?;
            txn.commit()?;
            tracing::info!(
                version = m.version,
                name = m.name,
                "applied store migration"
            );
        }
        self.schema_version()
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Db(e.to_string()))?;
        let txn = self.rw()?.begin_write()?;
        txn.open_table(table)?.insert(key, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.begin_read()?;
        let t = match txn.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match t.get(key)? {
            None => Ok(None),
            Some(v) => {
                serde_json::from_slice(v.value())
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        key: key.to_string(),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Every row of `table` that decodes; one that does not is skipped and
    /// logged (one bad row must not hide the others: the daemon would
    /// treat their VMs as gone).
    fn list<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let (rows, bad) = self.list_reporting(table)?;
        for b in bad {
            tracing::error!(table = %table, "skipping a store row that cannot be read: {b}");
        }
        Ok(rows)
    }

    /// The rows that decode, and an error for each that does not.
    fn list_reporting<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<(Vec<T>, Vec<StoreError>), StoreError> {
        let txn = self.begin_read()?;
        let t = match txn.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(e.into()),
        };
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        for row in t.iter()? {
            let (k, v) = row?;
            match serde_json::from_slice(v.value()) {
                Ok(r) => out.push(r),
                Err(e) => bad.push(StoreError::Corrupt {
                    key: k.value().to_string(),
                    message: e.to_string(),
                }),
            }
        }
        Ok((out, bad))
    }

    fn delete(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool, StoreError> {
        let txn = self.rw()?.begin_write()?;
        let existed = txn.open_table(table)?.remove(key)?.is_some();
        txn.commit()?;
        Ok(existed)
    }

    /// Inserts or replaces a VM record (durable when this returns).
    pub fn put_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let r = self.put(VMS, &vm.id, vm);
        self.vm_written();
        r
    }

    /// How many VM writes this handle has seen (see `vm_writes`).
    pub fn vm_generation(&self) -> u64 {
        self.vm_writes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counted after the write: a reader that read the rows under the old
    /// count reads them again.
    fn vm_written(&self) {
        self.vm_writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Inserts a new VM record in one transaction: refuses a taken name and
    /// assigns the lowest free address of the subnet (`gateway` excluded) and
    /// a MAC derived from it. `None` when the name is taken.
    pub fn reserve_vm(
        &self,
        vm: &VmRecord,
        gateway: std::net::Ipv4Addr,
        prefix_len: u8,
    ) -> Result<Option<VmRecord>, StoreError> {
        let txn = self.rw()?.begin_write()?;
        let rec = {
            let mut t = txn.open_table(VMS)?;
            let mut used = std::collections::HashSet::new();
            for row in t.iter()? {
                let (_, v) = row?;
                // Read loosely: a row this version cannot decode as a
                // record still holds its name and address.
                if let Ok(other) = serde_json::from_slice::<serde_json::Value>(v.value()) {
                    if other.get("name").and_then(|n| n.as_str()) == Some(vm.name.as_str()) {
                        return Ok(None);
                    }
                    if let Some(ip) = other
                        .get("ip")
                        .and_then(|s| s.as_str())
                        .and_then(|s| s.parse::<std::net::Ipv4Addr>().ok())
                    {
                        used.insert(ip);
                    }
                }
            }
            let ip = free_ip(gateway, prefix_len, &used).ok_or_else(|| {
                StoreError::Db(format!(
                    "no free address left in {gateway}/{prefix_len}; delete VMs or use a larger subnet"
                ))
            })?;
            let o = ip.octets();
            let mut rec = vm.clone();
            rec.ip = Some(ip.to_string());
            rec.mac = Some(format!(
                "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
                o[0], o[1], o[2], o[3]
            ));
            let bytes = serde_json::to_vec(&rec).map_err(|e| StoreError::Db(e.to_string()))?;
            t.insert(rec.id.as_str(), bytes.as_slice())?;
            rec
        };
        txn.commit()?;
        self.vm_written();
        Ok(Some(rec))
    }

    pub fn get_vm(&self, id: &str) -> Result<Option<VmRecord>, StoreError> {
        self.get(VMS, id)
    }

    pub fn list_vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        self.list(VMS)
    }

    /// The VM records that decode, and the keys (VM ids) of those that do
    /// not: whatever such a VM holds on the host must be left alone.
    pub fn list_vms_reporting(&self) -> Result<(Vec<VmRecord>, Vec<String>), StoreError> {
        let (rows, bad) = self.list_reporting(VMS)?;
        let keys = bad
            .into_iter()
            .map(|e| match e {
                StoreError::Corrupt { key, .. } => key,
                other => other.to_string(),
            })
            .collect();
        Ok((rows, keys))
    }

    /// Writes raw bytes as a VM row (tests: a row written by a newer or
    /// broken banger).
    #[cfg(test)]
    pub fn put_raw_vm(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self.rw()?.begin_write()?;
        txn.open_table(VMS)?.insert(key, bytes)?;
        txn.commit()?;
        self.vm_written();
        Ok(())
    }

    pub fn find_vm_by_name(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        Ok(self.list_vms()?.into_iter().find(|v| v.name == name))
    }

    pub fn delete_vm(&self, id: &str) -> Result<bool, StoreError> {
        let r = self.delete(VMS, id);
        self.vm_written();
        r
    }

    pub fn put_image(&self, img: &ImageRecord) -> Result<(), StoreError> {
        self.put(IMAGES, &img.name, img)
    }
    pub fn get_image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.get(IMAGES, name)
    }
    pub fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.list(IMAGES)
    }
    pub fn delete_image(&self, name: &str) -> Result<bool, StoreError> {
        self.delete(IMAGES, name)
    }

    pub fn put_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        self.put(SNAPSHOTS, &s.name, s)
    }
    /// Records `s` unless a snapshot of its name exists (one transaction);
    /// false when it did.
    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(s).map_err(|e| StoreError::Db(e.to_string()))?;
        let txn = self.rw()?.begin_write()?;
        {
            let mut t = txn.open_table(SNAPSHOTS)?;
            if t.get(s.name.as_str())?.is_some() {
                return Ok(false);
            }
            t.insert(s.name.as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }
    pub fn get_snapshot(&self, name: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        self.get(SNAPSHOTS, name)
    }
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, StoreError> {
        self.list(SNAPSHOTS)
    }
    pub fn delete_snapshot(&self, name: &str) -> Result<bool, StoreError> {
        self.delete(SNAPSHOTS, name)
    }

    pub fn put_kernel(&self, k: &KernelRecord) -> Result<(), StoreError> {
        self.put(KERNELS, &k.name, k)
    }
    pub fn get_kernel(&self, name: &str) -> Result<Option<KernelRecord>, StoreError> {
        self.get(KERNELS, name)
    }
    pub fn list_kernels(&self) -> Result<Vec<KernelRecord>, StoreError> {
        self.list(KERNELS)
    }
    pub fn delete_kernel(&self, name: &str) -> Result<bool, StoreError> {
        self.delete(KERNELS, name)
    }

    /// A setting, if set.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.begin_read()?;
        let t = match txn.open_table(SETTINGS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(key)?.map(|v| v.value().to_string()))
    }

    /// Sets a setting (durable when this returns).
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let txn = self.rw()?.begin_write()?;
        txn.open_table(SETTINGS)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }
}

/// The lowest host address of the subnet that is neither the gateway nor used.
pub fn free_ip(
    gateway: std::net::Ipv4Addr,
    prefix_len: u8,
    used: &std::collections::HashSet<std::net::Ipv4Addr>,
) -> Option<std::net::Ipv4Addr> {
    let mask: u32 = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - prefix_len as u32)
    };
    let net = u32::from(gateway) & mask;
    let broadcast = net | !mask;
    (net + 1..broadcast)
        .map(std::net::Ipv4Addr::from)
        .find(|ip| *ip != gateway && !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vm_write_moves_the_generation_and_reads_do_not() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.redb")).unwrap();
        let g0 = s.vm_generation();
        let rec = VmRecord::new(
            "a",
            "img",
            "k",
            1,
            256,
            1 << 30,
            false,
            crate::domain::VmmKind::Qemu,
        );
        let mut rec = s
            .reserve_vm(&rec, "172.16.0.1".parse().unwrap(), 24)
            .unwrap()
            .unwrap();
        let g1 = s.vm_generation();
        assert!(g1 > g0);
        s.list_vms().unwrap();
        s.find_vm_by_name("a").unwrap();
        assert_eq!(s.vm_generation(), g1, "reads leave it");
        rec.state = crate::domain::VmState::Running;
        s.put_vm(&rec).unwrap();
        let g2 = s.vm_generation();
        assert!(g2 > g1);
        s.delete_vm(&rec.id).unwrap();
        assert!(s.vm_generation() > g2);
    }

    #[test]
    fn an_undecodable_vm_row_is_skipped_reported_and_keeps_its_address() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.redb")).unwrap();
        let good = VmRecord::new(
            "good",
            "img",
            "k",
            1,
            256,
            1 << 30,
            false,
            crate::domain::VmmKind::Qemu,
        );
        let good = s
            .reserve_vm(&good, "172.16.0.1".parse().unwrap(), 24)
            .unwrap()
            .unwrap();
        // A newer banger's row (a state this one does not know) and garbage.
        s.put_raw_vm(
            "00000000000000aa",
            br#"{"name":"future","ip":"172.16.0.3","state":"hibernating"}"#,
        )
        .unwrap();
        s.put_raw_vm("00000000000000bb", b"\xff\x00not json")
            .unwrap();
        let all = s.list_vms().unwrap();
        assert_eq!(all.len(), 1, "the good row is still listed");
        assert_eq!(all[0].id, good.id);
        let (rows, bad) = s.list_vms_reporting().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(bad, ["00000000000000aa", "00000000000000bb"]);
        // The unreadable VM's name and address are not handed out again.
        let mut taken = good.clone();
        taken.name = "future".into();
        taken.id = "00000000000000cc".into();
        assert!(s
            .reserve_vm(&taken, "172.16.0.1".parse().unwrap(), 24)
            .unwrap()
            .is_none());
        let mut next = good.clone();
        next.name = "next".into();
        next.id = "00000000000000dd".into();
        let next = s
            .reserve_vm(&next, "172.16.0.1".parse().unwrap(), 24)
            .unwrap()
            .unwrap();
        assert_eq!(next.ip.as_deref(), Some("172.16.0.4"));
    }
    use crate::domain::VmState;

    pub(crate) fn vm(name: &str) -> VmRecord {
        let mut v = VmRecord::new(
            name,
            "debian-bookworm",
            "",
            2,
            1024,
            8 << 30,
            false,
            Default::default(),
        );
        v.state = VmState::Stopped;
        v
    }

    #[test]
    fn reserve_assigns_unique_addresses_and_refuses_taken_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let gw = std::net::Ipv4Addr::new(172, 16, 0, 1);
        let a = s.reserve_vm(&vm("a"), gw, 24).unwrap().unwrap();
        let b = s.reserve_vm(&vm("b"), gw, 24).unwrap().unwrap();
        assert_eq!(a.ip.as_deref(), Some("172.16.0.2"));
        assert_eq!(b.ip.as_deref(), Some("172.16.0.3"));
        assert_eq!(a.mac.as_deref(), Some("02:42:ac:10:00:02"));
        assert!(s.reserve_vm(&vm("a"), gw, 24).unwrap().is_none());
        s.delete_vm(&a.id).unwrap();
        let c = s.reserve_vm(&vm("c"), gw, 24).unwrap().unwrap();
        assert_eq!(
            c.ip.as_deref(),
            Some("172.16.0.2"),
            "released addresses are reused"
        );
        // A /30 has two hosts: the gateway and one VM.
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.redb")).unwrap();
        let gw = std::net::Ipv4Addr::new(10, 0, 0, 1);
        assert!(s.reserve_vm(&vm("x"), gw, 30).unwrap().is_some());
        assert!(s.reserve_vm(&vm("y"), gw, 30).is_err());
    }

    fn sha(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn open_migrates_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), migrations::latest_version());
        assert_eq!(
            s.migrate_to(migrations::latest_version()).unwrap(),
            migrations::latest_version()
        );
        s.put_vm(&vm("a")).unwrap();
        drop(s);
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), migrations::latest_version());
        assert_eq!(s.list_vms().unwrap().len(), 1);
    }

    #[test]
    fn read_only_never_migrates_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        // An old-schema file: a redb file at version 0 (never migrated).
        drop(redb::Database::create(&p).unwrap());
        let before = sha(&p);
        let ro = Store::open_read_only(&p).unwrap();
        assert_eq!(ro.schema_version().unwrap(), 0);
        assert!(ro.list_vms().unwrap().is_empty());
        assert!(matches!(ro.put_vm(&vm("x")), Err(StoreError::ReadOnly)));
        assert!(matches!(ro.migrate_to(1), Err(StoreError::ReadOnly)));
        drop(ro);
        assert_eq!(before, sha(&p), "read-only open changed the file");
        // A normal open then migrates it.
        let rw = Store::open(&p).unwrap();
        assert_eq!(rw.schema_version().unwrap(), migrations::latest_version());
    }

    #[test]
    fn a_v1_file_migrates_to_the_latest_and_read_only_leaves_it_at_v1() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        {
            let s = Store::open(&p).unwrap();
            // Roll the file back to a real v1 shape: drop the v2 table.
            let db = s.rw().unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(SETTINGS).unwrap();
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, 1).unwrap();
            txn.commit().unwrap();
            s.put_vm(&vm("keep")).unwrap();
        }
        let before = sha(&p);
        let ro = Store::open_read_only(&p).unwrap();
        assert_eq!(ro.schema_version().unwrap(), 1);
        assert_eq!(ro.setting(DEFAULT_IMAGE_KEY).unwrap(), None);
        assert!(matches!(
            ro.set_setting("k", "v"),
            Err(StoreError::ReadOnly)
        ));
        drop(ro);
        assert_eq!(before, sha(&p));
        let rw = Store::open(&p).unwrap();
        assert_eq!(rw.schema_version().unwrap(), migrations::latest_version());
        rw.set_setting(DEFAULT_IMAGE_KEY, "x").unwrap();
        assert_eq!(rw.setting(DEFAULT_IMAGE_KEY).unwrap().as_deref(), Some("x"));
        assert!(
            rw.find_vm_by_name("keep").unwrap().is_some(),
            "data survived the migration"
        );
        // Idempotent.
        let latest = migrations::latest_version();
        assert_eq!(rw.migrate_to(latest).unwrap(), latest);
    }

    #[test]
    fn read_only_of_missing_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Store::open_read_only(&dir.path().join("nope.redb"))
            .err()
            .unwrap();
        assert!(matches!(e, StoreError::Missing(_)), "{e}");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        {
            let db = redb::Database::create(&p).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let e = Store::open(&p).err().unwrap();
        assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
    }

    #[test]
    fn second_writer_is_told_the_file_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        let _a = Store::open(&p).unwrap();
        let e = Store::open(&p).err().unwrap();
        assert!(matches!(e, StoreError::Locked(_)), "{e}");
    }

    /// A state file written by the code of commit 19f19dc (schema v2, the
    /// records' JSON from that day) still opens and reads the same.
    #[test]
    fn a_state_file_from_schema_v2_still_opens() {
        use crate::domain::{VmmKind, WorkspaceMode};
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2.redb");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        std::fs::copy(&fixture, &p).unwrap();
        let ro = Store::open_read_only(&p).unwrap();
        assert_eq!(ro.schema_version().unwrap(), 2);
        drop(ro);
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), migrations::latest_version());
        assert!(s.list_snapshots().unwrap().is_empty());
        let mut vms = s.list_vms().unwrap();
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(vms.len(), 2);
        let dev = &vms[0];
        assert_eq!(dev.name, "dev");
        assert_eq!(dev.id, "0123456789abcdef");
        assert_eq!(dev.state, VmState::Running);
        assert_eq!(dev.vmm, VmmKind::Qemu);
        assert_eq!(dev.ip.as_deref(), Some("172.16.0.2"));
        assert_eq!(dev.tap.as_deref(), Some("bgt0a1b2c3d"));
        assert_eq!(dev.vmm_pid, Some(4242));
        assert!(dev.nat);
        let ws = dev.workspace.as_ref().unwrap();
        assert_eq!(ws.mode, WorkspaceMode::FullCopy);
        assert_eq!(ws.host_path, "/home/me/src/app");
        assert!(ws.include_untracked && !ws.pinned);
        let old = &vms[1];
        assert_eq!(old.state, VmState::Error);
        assert_eq!(old.vmm, VmmKind::Firecracker);
        assert_eq!(
            old.last_error.as_deref(),
            Some("the guest agent did not answer")
        );
        assert_eq!(
            s.get_image("debian-bookworm").unwrap().unwrap().kernel_ref,
            "debian-cloud"
        );
        assert!(s.get_kernel("debian-cloud").unwrap().unwrap().has_initrd);
        assert_eq!(
            s.setting(DEFAULT_IMAGE_KEY).unwrap().as_deref(),
            Some("debian-bookworm")
        );
        // Written back and read again, a record keeps the same JSON shape.
        s.put_vm(dev).unwrap();
        assert_eq!(&s.get_vm(&dev.id).unwrap().unwrap(), dev);
    }

    #[test]
    fn unique_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let gw = std::net::Ipv4Addr::new(172, 16, 0, 1);
        assert!(s.reserve_vm(&vm("a"), gw, 24).unwrap().is_some());
        assert!(s.reserve_vm(&vm("a"), gw, 24).unwrap().is_none());
        assert!(s.reserve_vm(&vm("b"), gw, 24).unwrap().is_some());
        assert_eq!(s.list_vms().unwrap().len(), 2);
        let a = s.find_vm_by_name("a").unwrap().unwrap();
        assert!(s.delete_vm(&a.id).unwrap());
        assert!(s.find_vm_by_name("a").unwrap().is_none());
    }
}
