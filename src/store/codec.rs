//! The store's own names for domain enums. Records persist these strings,
//! not the domain types' serde names, so a renamed variant in `domain` (or on
//! the wire) never changes what a state file says. Adding a variant means
//! adding its name here; changing a name needs a migration.

use serde::{Deserialize, Deserializer, Serializer};

use crate::domain::{VmState, VmmKind, WorkspaceMode};

/// A bidirectional table between a domain enum and its stored names.
trait Stored: Sized + Copy + PartialEq + 'static {
    const WHAT: &'static str;
    const NAMES: &'static [(Self, &'static str)];
    /// Variants that exist only in views and are never stored.
    const VIEW_ONLY: &'static [Self] = &[];
}

impl Stored for VmState {
    const WHAT: &'static str = "VM state";
    const NAMES: &'static [(Self, &'static str)] = &[
        (VmState::Created, "created"),
        (VmState::Starting, "starting"),
        (VmState::Running, "running"),
        (VmState::Stopping, "stopping"),
        (VmState::Stopped, "stopped"),
        (VmState::Error, "error"),
    ];
    const VIEW_ONLY: &'static [Self] = &[VmState::Degraded, VmState::Unresponsive];
}

impl Stored for VmmKind {
    const WHAT: &'static str = "VMM kind";
    const NAMES: &'static [(Self, &'static str)] = &[
        (VmmKind::Qemu, "qemu"),
        (VmmKind::Firecracker, "firecracker"),
    ];
}

impl Stored for WorkspaceMode {
    const WHAT: &'static str = "workspace mode";
    const NAMES: &'static [(Self, &'static str)] = &[
        (WorkspaceMode::Overlay, "overlay"),
        (WorkspaceMode::FullCopy, "full_copy"),
    ];
}

fn ser<T: Stored, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    let name = T::NAMES
        .iter()
        .find(|(x, _)| x == v)
        .map(|(_, n)| *n)
        .ok_or_else(|| {
            let why = match T::VIEW_ONLY.contains(v) {
                true => "is only shown, never stored",
                false => "has no stored name",
            };
            serde::ser::Error::custom(format!("this {} {why}", T::WHAT))
        })?;
    s.serialize_str(name)
}

fn de<'de, T: Stored, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    T::NAMES
        .iter()
        .find(|(_, n)| *n == s)
        .map(|(x, _)| *x)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown {} {s:?}", T::WHAT)))
}

macro_rules! codec {
    ($module:ident, $ty:ty) => {
        pub mod $module {
            use super::*;
            pub fn serialize<S: Serializer>(v: &$ty, s: S) -> Result<S::Ok, S::Error> {
                ser(v, s)
            }
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                de(d)
            }
        }
    };
}

codec!(vm_state, VmState);
codec!(vmm_kind, VmmKind);
codec!(workspace_mode, WorkspaceMode);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant of `T`, found through serde (its error for an
    /// unknown variant lists them all), so a variant added later is
    /// checked without anyone listing it here.
    fn every<T: Stored + serde::de::DeserializeOwned>() -> Vec<T> {
        let e = serde_json::from_str::<T>("\"not a variant!\"")
            .err()
            .expect("no variant has that name")
            .to_string();
        // "unknown variant `x`, expected `a` or `b`" / "one of `a`, `b`, `c`"
        let list = e
            .split_once("expected ")
            .map(|(_, l)| l)
            .unwrap_or_else(|| panic!("serde's error names the variants: {e}"));
        let names: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
        names
            .iter()
            .map(|n| {
                serde_json::from_str::<T>(&format!("\"{n}\""))
                    .unwrap_or_else(|e| panic!("{n}: {e}"))
            })
            .collect()
    }

    fn complete<T: Stored + std::fmt::Debug + serde::de::DeserializeOwned>() -> usize {
        let all = every::<T>();
        for v in &all {
            assert!(
                T::NAMES.iter().any(|(x, _)| x == v) != T::VIEW_ONLY.contains(v),
                "{v:?} needs a stored name, or to be listed as view-only (not both)"
            );
        }
        all.len()
    }

    #[test]
    fn every_variant_has_a_stored_name() {
        assert_eq!(complete::<VmState>(), 8);
        assert_eq!(complete::<VmmKind>(), 2);
        assert_eq!(complete::<WorkspaceMode>(), 2);
    }
}
