//! Transparent huge pages: off for the processes that run a node, unless asked for.
//!
//! mimalloc asks the kernel for transparent huge pages on every region it maps
//! (`madvise(MADV_HUGEPAGE)`; its default on Linux), so the first touch of each fresh 2 MiB
//! region faults in and zeroes all of it at once. A node that grows (IMVUs created by the
//! hundred thousand) spends its time there: in `perf` of `vcos bench local --only spawn`, a third
//! of the samples were the kernel zeroing huge pages (`clear_page_erms` under
//! `do_huge_pmd_anonymous_page`), and spawn in memory ran 1.6–2 × faster without them, every
//! other row of the bench unchanged within its noise (README, "Transparent huge pages off"). Servers
//! that care about latency commonly run without them for the same reason (Redis warns at start
//! when they are on).
//!
//! The setting is the kernel's per-process flag (`prctl(PR_SET_THP_DISABLE)`): it applies to
//! every mapping, also those mimalloc made before `main`, and children inherit it. Who applies
//! it: `vcos up`, the measuring children of `vcos bench local`, and the benches that run a node
//! or the models in their own process (`bench::run`). The peers those start (wrk, Xvfb, PyTorch
//! with its default allocator) do not ask for huge pages themselves, so it changes nothing for
//! them; etcd and Erlang are started from processes that do not set it.
//!
//! `VCOS_TRANSPARENT_HUGE_PAGES=on` keeps mimalloc's default (huge pages where the system's
//! `transparent_hugepage` mode allows them).

use anyhow::bail;

/// The environment variable that chooses.
const ENV: &str = "VCOS_TRANSPARENT_HUGE_PAGES";

/// What the environment asks for: `Ok(true)` to keep huge pages.
fn wanted(value: Option<&str>) -> anyhow::Result<bool> {
    match value.map(str::trim) {
        None | Some("") | Some("off") => Ok(false),
        Some("on") => Ok(true),
        Some(other) => bail!("{ENV}={other:?}: expected `on` (keep transparent huge pages) or `off` (the default)"),
    }
}

/// Applies the choice of [`ENV`] to this process (and the children it starts). A kernel that
/// refuses the flag leaves huge pages as they are, with a warning: the node runs either way.
pub(crate) fn apply() -> anyhow::Result<()> {
    let value = std::env::var(ENV).ok();
    if wanted(value.as_deref())? {
        return Ok(());
    }
    disable();
    Ok(())
}

#[cfg(target_os = "linux")]
fn disable() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "could not turn transparent huge pages off (prctl PR_SET_THP_DISABLE); running with the system's setting");
    }
}

#[cfg(not(target_os = "linux"))]
fn disable() {}

#[cfg(test)]
mod tests {
    use super::wanted;

    #[test]
    fn values_parse_or_name_what_is_wrong() {
        assert!(!wanted(None).expect("unset"));
        assert!(!wanted(Some("off")).expect("off"));
        assert!(!wanted(Some("")).expect("empty"));
        assert!(wanted(Some("on")).expect("on"));
        let e = wanted(Some("yes")).expect_err("yes").to_string();
        assert!(e.contains("VCOS_TRANSPARENT_HUGE_PAGES") && e.contains("\"yes\"") && e.contains("`on`"), "{e}");
    }

    /// The flag is set on this process and reads back (Linux only: elsewhere there is none).
    #[cfg(target_os = "linux")]
    #[test]
    fn disabling_sets_the_process_flag() {
        super::disable();
        // A kernel or sandbox without the prctl leaves it unset; then there is nothing to check.
        if let Ok(flag) = rustix::thread::transparent_huge_pages_are_disabled() {
            assert!(flag, "PR_GET_THP_DISABLE reads back 0 after PR_SET_THP_DISABLE");
        }
    }
}
