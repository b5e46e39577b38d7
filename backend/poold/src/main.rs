//! `poold`: runs one pool. See `poold --help`, and the README's "Running poold yourself".

use poold::config::{self, Command};
use poold::supervisor::Supervisor;
use poold::{builtin, log};
use std::os::fd::{FromRawFd, OwnedFd};

fn main() {
    let cfg = match config::parse(std::env::args().skip(1)) {
        Ok(Command::Run(c)) => *c,
        Ok(Command::Help) => {
            print!("{}", config::USAGE);
            return;
        }
        Ok(Command::Version) => {
            println!("poold {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Err(e) => {
            eprintln!("poold: {e}");
            std::process::exit(2);
        }
    };
    log::set_pool_name(&cfg.name);
    if let Some(fd) = cfg.lifeline_fd {
        // Managed by nginx: this process stays as the watchdog, the pool runs in its child
        // (which returns here), and a new child replaces one that dies.
        poold::watchdog::run(fd);
    }
    let handler = match cfg
        .handler
        .strip_prefix("builtin:")
        .and_then(builtin::lookup)
    {
        Some(h) => h,
        None => {
            poold::log!(
                "emerg",
                "unknown handler \"{}\" (built-in handlers: {})",
                cfg.handler,
                builtin::NAMES
                    .iter()
                    .map(|n| format!("builtin:{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            std::process::exit(2);
        }
    };
    let lifeline = cfg.lifeline_fd.map(|fd| {
        // SAFETY: the nginx module passes this descriptor to us by number and keeps no copy of
        // it in this process; we are its only owner.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    let result = Supervisor::new(cfg, handler, lifeline).and_then(Supervisor::run);
    if let Err(e) = result {
        poold::log!("emerg", "{e}");
        std::process::exit(1);
    }
}
