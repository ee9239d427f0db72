//! Transparent huge pages for the simulator's heap: whether to restart `shoal-sim` with glibc's
//! `glibc.malloc.hugetlb=1` tunable, and the restart itself.
//!
//! Why: a large run's working set is gigabytes of small per-listener tables touched in random
//! order, so much of its time goes to TLB misses. Where the kernel gives huge pages only on
//! request (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, Debian's default), glibc
//! asks for them when that tunable is set. It is read once, when the process starts, hence the
//! restart. Decisions do not change: the same scenario and seed give the same trace.
//! Opt out with `SHOAL_SIM_HUGE_PAGES=0`.

use std::ffi::{OsStr, OsString};

/// The glibc tunable that makes `malloc` advise huge pages for the memory it maps.
pub const TUNABLE: &str = "glibc.malloc.hugetlb=1";
/// Environment variable that turns the restart off (`0`).
pub const OPT_OUT: &str = "SHOAL_SIM_HUGE_PAGES";
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The `GLIBC_TUNABLES` value to restart with, or `None` when a restart would change nothing:
/// the kernel gives huge pages to every process already (`always`) or to none (`never`), the
/// user opted out, or the tunable is already set (also what stops a second restart).
pub fn restart_tunables(
    thp_enabled: &str,
    tunables: Option<&OsStr>,
    opt_out: Option<&OsStr>,
) -> Option<OsString> {
    if opt_out.is_some_and(|v| v == "0") || !thp_enabled.contains("[madvise]") {
        return None;
    }
    match tunables {
        None => Some(OsString::from(TUNABLE)),
        Some(t) if t.to_string_lossy().contains("glibc.malloc.hugetlb") => None,
        Some(t) if t.is_empty() => Some(OsString::from(TUNABLE)),
        Some(t) => {
            let mut v = t.to_os_string();
            v.push(":");
            v.push(TUNABLE);
            Some(v)
        }
    }
}

/// Restart this process with huge pages enabled when [`restart_tunables`] says so. Returns only
/// when there is nothing to do or the restart failed (the run then goes on without them).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn restart_with_huge_pages() {
    use std::os::unix::process::CommandExt;
    let Ok(thp) = std::fs::read_to_string(THP_ENABLED) else {
        return;
    };
    let Some(tunables) = restart_tunables(
        &thp,
        std::env::var_os("GLIBC_TUNABLES").as_deref(),
        std::env::var_os(OPT_OUT).as_deref(),
    ) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let err = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    eprintln!("warning: could not restart with huge pages ({err}); running without them");
}

/// Nothing to do off Linux/glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn restart_with_huge_pages() {}

#[cfg(test)]
mod tests {
    use super::*;

    const MADVISE: &str = "always [madvise] never\n";

    #[test]
    fn restarts_only_when_the_kernel_waits_to_be_asked() {
        assert_eq!(
            restart_tunables(MADVISE, None, None),
            Some(OsString::from(TUNABLE))
        );
        assert_eq!(
            restart_tunables("[always] madvise never\n", None, None),
            None
        );
        assert_eq!(
            restart_tunables("always madvise [never]\n", None, None),
            None
        );
        assert_eq!(restart_tunables("", None, None), None);
    }

    #[test]
    fn keeps_the_users_tunables_and_never_restarts_twice() {
        let user = OsStr::new("glibc.malloc.arena_max=2");
        assert_eq!(
            restart_tunables(MADVISE, Some(user), None),
            Some(OsString::from(
                "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
            ))
        );
        assert_eq!(
            restart_tunables(MADVISE, Some(OsStr::new(TUNABLE)), None),
            None
        );
        let theirs = OsStr::new("glibc.malloc.hugetlb=0");
        assert_eq!(restart_tunables(MADVISE, Some(theirs), None), None);
        assert_eq!(
            restart_tunables(MADVISE, Some(OsStr::new("")), None),
            Some(OsString::from(TUNABLE))
        );
    }

    #[test]
    fn the_user_can_opt_out() {
        assert_eq!(restart_tunables(MADVISE, None, Some(OsStr::new("0"))), None);
        assert_eq!(
            restart_tunables(MADVISE, None, Some(OsStr::new("1"))),
            Some(OsString::from(TUNABLE))
        );
    }
}
