//! The seccomp-BPF allowlist: compiled by `seccompiler` from system call numbers,
//! installed on the calling thread (every thread it starts later inherits it).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule};

use crate::sandbox::SeccompMode;

/// Installs a filter that allows `rules` (a number with no rule: always; with rules:
/// when one matches) and treats every other system call as `mode` says. `Ok(false)`
/// when `mode` is [`SeccompMode::None`] (nothing installed).
pub fn install(mode: SeccompMode, rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<bool, String> {
    let mismatch = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::None => return Ok(false),
    };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("architecture {}: {e:?}", std::env::consts::ARCH))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| format!("building the filter: {e}"))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("compiling the filter: {e:?}"))?;
    seccompiler::apply_filter(&program).map_err(|e| format!("installing the filter: {e}"))?;
    Ok(true)
}
