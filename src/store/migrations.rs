//! Explicit, versioned schema migrations. Each runs in its own write
//! transaction together with the version bump, so a crash leaves the file at
//! the previous version or the next, never between.

use redb::WriteTransaction;

use super::{StoreError, IMAGES, KERNELS, META, SETTINGS, SNAPSHOTS, VMS};

/// One schema step.
pub struct Migration {
    pub version: u64,
    pub name: &'static str,
    pub apply: fn(&WriteTransaction) -> Result<(), StoreError>,
}

/// Every migration, in order. Append only.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "baseline: vms, images, kernels, meta",
        apply: baseline,
    },
    Migration {
        version: 2,
        name: "settings (default image)",
        apply: settings,
    },
    Migration {
        version: 3,
        name: "snapshots",
        apply: snapshots,
    },
];

/// The schema version this build writes.
pub fn latest_version() -> u64 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

fn baseline(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(META)?;
    txn.open_table(VMS)?;
    txn.open_table(IMAGES)?;
    txn.open_table(KERNELS)?;
    Ok(())
}

fn settings(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(SETTINGS)?;
    Ok(())
}

fn snapshots(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(SNAPSHOTS)?;
    Ok(())
}
