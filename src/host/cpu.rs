//! CPU facts for VMM choices.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether KVM can run a normal guest here: `/dev/kvm` exists and the CPU
/// has hardware virtualisation (`vmx`/`svm`) and this is not nested PVM,
/// where a normal guest kernel dies in batch emulation.
pub fn hardware_kvm() -> bool {
    if !std::path::Path::new("/dev/kvm").exists()
        || std::path::Path::new("/sys/module/kvm_pvm").exists()
    {
        return false;
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Why [`hardware_kvm`] is false, for `doctor` and errors.
pub fn kvm_unavailable_reason() -> Option<String> {
    if !std::path::Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm does not exist".into());
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return Some(
            "KVM here is nested PVM (/sys/module/kvm_pvm), which cannot run a normal guest kernel"
                .into(),
        );
    }
    (!hardware_kvm()).then(|| "the CPU has no vmx/svm flag (no hardware virtualisation)".into())
}

/// The host TSC rate in kHz, measured once (rdtsc across 100 ms). Under TCG
/// the guest's TSC runs at this rate; telling the guest kernel
/// (`tsc_early_khz=`) avoids its calibration, which can hang under emulation.
pub fn tsc_khz() -> u64 {
    static KHZ: OnceLock<u64> = OnceLock::new();
    *KHZ.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: rdtsc has no preconditions on x86_64.
            let t0 = Instant::now();
            let c0 = unsafe { core::arch::x86_64::_rdtsc() };
            std::thread::sleep(Duration::from_millis(100));
            let c1 = unsafe { core::arch::x86_64::_rdtsc() };
            let dt = t0.elapsed().as_secs_f64();
            ((c1.wrapping_sub(c0)) as f64 / dt / 1000.0) as u64
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            0
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn tsc_rate_is_plausible() {
        let khz = super::tsc_khz();
        assert!((100_000..10_000_000).contains(&khz), "{khz}");
    }
}
