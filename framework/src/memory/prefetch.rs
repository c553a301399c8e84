//! Cache-line prefetches ahead of writes into guest memory.
//!
//! A buffer the driver just posted sits in the driver's CPU cache. A plain prefetch
//! (`prefetcht0`) brings its lines over shared, and the store that follows has to ask for
//! them again, exclusive; `prefetchw` asks for ownership at once, so the store finds the
//! line ready. The release build targets baseline x86_64, where the `_MM_HINT_ET0` hint
//! compiles to `prefetcht0`, so `prefetchw` is emitted directly, on CPUs that have it
//! (CPUID 0x8000_0001 ECX bit 8, "3dnowprefetch" in /proc/cpuinfo).

/// Prefetches the cache lines of host addresses `[start, end)` for writing. Only a hint:
/// nothing is read or written, and no address is checked or dereferenced.
#[inline]
pub(super) fn lines_for_write(start: usize, end: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let with_ownership = has_prefetchw();
        let mut line = start & !63;
        while line < end {
            if with_ownership {
                // SAFETY: PREFETCHW never faults, whatever the address, and changes no
                // memory, register or flag: it only asks the cache for the line. It is
                // executed only where CPUID says the CPU has it.
                unsafe {
                    std::arch::asm!(
                        "prefetchw [{0}]",
                        in(reg) line,
                        options(nostack, preserves_flags, readonly)
                    )
                };
            } else {
                // SAFETY: a prefetch never faults and changes no memory; SSE, which the
                // intrinsic needs, is part of every x86_64 CPU.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        line as *const i8,
                    )
                };
            }
            match line.checked_add(64) {
                Some(next) => line = next,
                None => break,
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, end);
}

/// Whether the CPU has PREFETCHW; asked once, then a relaxed load.
#[cfg(target_arch = "x86_64")]
fn has_prefetchw() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    const UNKNOWN: u8 = 0;
    const YES: u8 = 1;
    const NO: u8 = 2;
    static HAS: AtomicU8 = AtomicU8::new(UNKNOWN);
    match HAS.load(Ordering::Relaxed) {
        YES => true,
        NO => false,
        _ => {
            let has = cpu_has_prefetchw();
            HAS.store(if has { YES } else { NO }, Ordering::Relaxed);
            has
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_prefetchw() -> bool {
    use std::arch::x86_64::__cpuid;
    // Leaf 0x8000_0000 gives the highest extended leaf; 0x8000_0001 is only asked for
    // where it exists.
    let highest = __cpuid(0x8000_0000).eax;
    highest >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_changes_nothing_and_takes_any_address() {
        let buf = vec![7u8; 4096];
        let start = buf.as_ptr() as usize;
        lines_for_write(start + 3, start + 300);
        // Addresses that are not mapped: a prefetch never faults.
        lines_for_write(0, 256);
        lines_for_write(usize::MAX - 127, usize::MAX);
        assert!(buf.iter().all(|&b| b == 7));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_cpu_is_asked_once_and_agrees_with_the_kernel() {
        let first = has_prefetchw();
        assert_eq!(has_prefetchw(), first);
        // The kernel names the same CPUID bit "3dnowprefetch".
        if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
            if let Some(flags) = info.lines().find(|l| l.starts_with("flags")) {
                let named = flags.split_whitespace().any(|f| f == "3dnowprefetch");
                assert_eq!(first, named, "CPUID and /proc/cpuinfo disagree");
            }
        }
    }
}
