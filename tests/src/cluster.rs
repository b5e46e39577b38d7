//! Several ngx-pool hosts on one machine, for the scale-out tests: `scripts/cluster` makes each
//! host a Linux network namespace with its own address and its own nginx + ngx-pool
//! (`nginx-conf/cluster/host.conf`), and a front nginx in the root namespace
//! (`nginx-conf/cluster/front.conf`) balancing over them on a loopback port.
//!
//! [`Cluster::up`] returns `None`, saying why, where namespaces cannot be made (not root, no
//! `ip`); dropping a [`Cluster`] stops every process of it and removes its namespaces, bridge and
//! links, even when the test failed.

use crate::http::{self, Response};
use crate::{free_port, repo_dir, temp_prefix};
use std::path::PathBuf;
use std::process::Command;

pub struct Cluster {
    /// The third byte of the hosts' addresses (10.77.NET.11, ...): one per test, so tests may
    /// run at once.
    pub net: u8,
    pub hosts: u8,
    /// The front's port on 127.0.0.1.
    pub port: u16,
    pub prefix: PathBuf,
    /// Log lines a test expects (substrings); any other alert/emerg/crit fails `check_logs`.
    allowed: Vec<String>,
}

fn script() -> PathBuf {
    repo_dir().join("scripts/cluster")
}

/// Why namespaces cannot be made here, if they cannot: not root, no `ip`, or a namespace refused
/// for want of privilege (a container without CAP_SYS_ADMIN). Any other failure is the test's.
fn cannot_make_namespaces(net: u8) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: ip netns needs CAP_SYS_ADMIN".into());
    }
    // One probe name per test: the tests of a binary run at once.
    let probe = format!("npc{net}-probe-{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
            None
        }
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
            assert!(
                why.contains("Operation not permitted") || why.contains("Permission denied"),
                "ip netns add {probe} failed as root: {why}"
            );
            Some(format!("ip netns add refused: {why}"))
        }
        Err(e) => Some(format!("no ip command (Debian package iproute2): {e}")),
    }
}

impl Cluster {
    /// `hosts` hosts and a front, all serving; `None` (with a message) where it cannot be done.
    pub fn up(net: u8, hosts: u8) -> Option<Cluster> {
        if let Some(why) = cannot_make_namespaces(net) {
            crate::skip(
                "the cluster test",
                &format!("it needs network namespaces: {why}"),
            );
            return None;
        }
        let c = Cluster {
            net,
            hosts,
            port: free_port(),
            prefix: temp_prefix(),
            allowed: Vec::new(),
        };
        // A cluster of this net left by a crashed run goes first.
        let _ = c.run("down", &[]);
        let out = c.run("up", &["--hosts", &hosts.to_string()]);
        assert!(
            out.status.success(),
            "scripts/cluster up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(c)
    }

    fn run(&self, cmd: &str, extra: &[&str]) -> std::process::Output {
        Command::new(script())
            .arg(cmd)
            .args(extra)
            .args([
                "--net",
                &self.net.to_string(),
                "--port",
                &self.port.to_string(),
            ])
            .arg("--prefix")
            .arg(&self.prefix)
            .output()
            .expect("run scripts/cluster")
    }

    /// Runs `scripts/cluster CMD HOST` (kill, reload, link-down, link-up).
    pub fn host_cmd(&self, cmd: &str, host: u8) {
        let out = self.run(cmd, &[&host.to_string()]);
        assert!(
            out.status.success(),
            "scripts/cluster {cmd} {host} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn addr(&self, host: u8) -> String {
        format!("10.77.{}.{}", self.net, 10 + host)
    }

    /// Which host an `X-Served-By` value names (1-based).
    pub fn host_of(&self, r: &Response) -> Option<u8> {
        let a = r.header("X-Served-By")?;
        (1..=self.hosts).find(|h| self.addr(*h) == a)
    }

    /// A GET through the front.
    pub fn get(&self, path: &str) -> std::io::Result<Response> {
        http::request(self.port, "GET", path, &[], b"")
    }

    /// A GET straight to one host, past the front.
    pub fn get_host(&self, host: u8, path: &str) -> std::io::Result<Response> {
        http::request_to(&self.addr(host), 8080, "GET", path, &[], b"")
    }

    pub fn host_log(&self, host: u8) -> String {
        std::fs::read_to_string(self.prefix.join(format!("h{host}/logs/error.log")))
            .unwrap_or_default()
    }

    /// The front's access log: one line per request with its upstream tries and statuses.
    pub fn front_access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("front/logs/access.log")).unwrap_or_default()
    }

    pub fn allow(&mut self, s: &str) {
        self.allowed.push(s.into());
    }

    /// No `[alert]`, `[emerg]` or `[crit]` on any host or the front unless allowed.
    pub fn check_logs(&self) {
        let mut logs: Vec<(String, String)> = (1..=self.hosts)
            .map(|h| (format!("host {h}"), self.host_log(h)))
            .collect();
        logs.push((
            "front".into(),
            std::fs::read_to_string(self.prefix.join("front/logs/error.log")).unwrap_or_default(),
        ));
        for (who, log) in logs {
            let bad = crate::unexpected_log_lines(&log, &self.allowed);
            assert!(
                bad.is_empty(),
                "unexpected lines in {who}'s error log:\n{}",
                bad.join("\n")
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.run("down", &[]);
        if !out.status.success() {
            eprintln!(
                "scripts/cluster down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}
