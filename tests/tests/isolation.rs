//! A pool's code cannot crash nginx, reach another pool's traffic, regain root or leave a
//! process behind (issue 26): each attack runs for real, as a hostile local process or handler
//! would, against a real nginx and poold.

use ngx_pool_tests::{Conf, Nginx};
use std::os::unix::fs::OpenOptionsExt;

/// The descriptors of process `pid` that are memfds of ngx-pool regions (`/memfd:ngx-pool:…`).
fn region_fds(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:ngx-pool:"))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_region_cannot_be_truncated_under_nginx() {
    let ng = Nginx::start(
        Conf::new(
            "    pool p handler=builtin:echo workers=2;",
            "    location /p { pool_pass p; }",
        )
        .workers(1),
    );
    let worker = ng.worker_pids()[0];
    let fds = region_fds(worker);
    assert!(!fds.is_empty(), "the nginx worker maps the pool's region");
    for path in &fds {
        // The attack of a process that got hold of the memfd (here through /proc, as root, the
        // strongest such process): shrink it to nothing, or grow it.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .expect("open the memfd through /proc");
        let len = f.metadata().unwrap().len();
        assert!(f.set_len(0).is_err(), "a region was truncated");
        assert!(f.set_len(len + 4096).is_err(), "a region was grown");
        assert_eq!(f.metadata().unwrap().len(), len);
    }
    // nginx and the pool go on.
    for _ in 0..20 {
        assert_eq!(ng.get("/p").status, 200);
    }
    assert_eq!(ng.worker_pids(), vec![worker], "the nginx worker lived");
    ng.finish();
}
