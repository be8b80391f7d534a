//! The `[scope]` config turned into what the kernel's scope filter matches: cgroup ids (the
//! inode numbers of the units' and paths' cgroup2 directories; the kernel also matches their
//! sub-cgroups), uids and comms. Units that start later get a cgroup later, so the daemon
//! resolves again every few seconds and reloads the kernel lists when they changed.
use std::{fs, os::unix::fs::MetadataExt, path::Path};

use crate::{config::Scope, probes::KernelScope, procs};

/// The kernel lists for `scope`, with the cgroup ids that exist now.
pub fn resolve(scope: &Scope, capture_max: u32) -> KernelScope {
    let mut ids = Vec::new();
    if let Some(root) = procs::cgroup2_mount() {
        for p in &scope.cgroups {
            if let Ok(md) = fs::metadata(root.join(p.trim_start_matches('/'))) {
                ids.push(md.ino());
            }
        }
        if !scope.units.is_empty() {
            units_under(&root, &scope.units, &mut ids);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    KernelScope {
        cgroup_ids: ids,
        uids: scope.uids.clone(),
        comms: scope.comms.clone(),
        use_cgroups: !scope.units.is_empty() || !scope.cgroups.is_empty(),
        use_uids: !scope.uids.is_empty(),
        use_comms: !scope.comms.is_empty(),
        capture_max,
    }
}

/// Does resolving again ever change the answer? Only cgroups come and go.
pub fn needs_refresh(scope: &Scope) -> bool {
    !scope.units.is_empty() || !scope.cgroups.is_empty()
}

/// Every cgroup directory named like one of `units`.
fn units_under(root: &Path, units: &[String], ids: &mut Vec<u64>) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = e.file_name();
            if units
                .iter()
                .any(|u| name.as_encoded_bytes() == u.as_bytes())
            {
                if let Ok(md) = e.metadata() {
                    ids.push(md.ino());
                }
                // Sub-cgroups are matched in the kernel through their ancestors.
                continue;
            }
            stack.push(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_become_kernel_flags() {
        let s = Scope {
            comms: vec!["python3".into()],
            uids: vec![1000],
            ..Default::default()
        };
        let k = resolve(&s, 4096);
        assert!(k.use_comms && k.use_uids && !k.use_cgroups);
        assert_eq!(k.capture_max, 4096);
        assert!(!needs_refresh(&s));
        let everyone = resolve(&Scope::default(), 1);
        assert!(!everyone.use_comms && !everyone.use_uids && !everyone.use_cgroups);
    }

    #[test]
    fn a_cgroup_path_resolves_to_its_inode() {
        let root = procs::cgroup2_mount().expect("cgroup2 is mounted on hosts leakwatch runs on");
        let s = Scope {
            cgroups: vec!["/".into()],
            units: vec!["leakwatch-no-such.service".into()],
            ..Default::default()
        };
        let k = resolve(&s, 1);
        assert!(k.use_cgroups);
        assert_eq!(k.cgroup_ids, vec![fs::metadata(&root).unwrap().ino()]);
    }
}
