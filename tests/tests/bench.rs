//! `scripts/bench --quick` keeps working: it builds what it needs, starts every target, loads each
//! for a second and prints the report. (Full runs are for people, never for CI.)

use std::process::Command;

#[test]
fn bench_script_quick_mode_runs_every_target() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/bench"))
        .arg("--quick")
        .output()
        .expect("run scripts/bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/bench --quick failed:\n{stdout}\n{stderr}"
    );
    for row in [
        "| return 200 |",
        "| pool_pass hello |",
        "| pool_pass echo |",
        "| proxy_pass native |",
        "| gunicorn",
        "| pool, 1 worker |",
        "## Transport: 1 nginx worker, 1 pool worker",
        "CPU × return 200 |",
        "## Buffering: pool_buffering on (default) and off",
        "| 1 MiB, buffering on |",
        "| 1 MiB, proxy_pass |",
        "## WSGI: one Flask app",
        "| /hello req/s |",
        "\n| ngx-pool | ",
        "## ASGI: one FastAPI app",
        "| /io c=256 req/s |",
        "| gunicorn asgi |",
        "## A burst of 16 requests",
        "| dynamic |",
        "## The seed's pattern",
        "| (c) Gunicorn 27 + Dirty Arbiters | 16 |",
        "| (d) ngx-pool + ngx_pool.Pool(4) | 16 |",
        "## Scale-out: one CPU view over 1, 2 and 3 hosts",
        "channel vs unix socket",
    ] {
        assert!(stdout.contains(row), "report lacks {row}:\n{stdout}");
    }
    // The scale-out part needs network namespaces: as root (CI) it must have run.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(stdout.contains("\n| 3 | "), "no three-host row:\n{stdout}");
        let scale_out = stdout.split("## Scale-out").nth(1).unwrap_or("");
        for line in scale_out
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| hosts"))
        {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            if cols.len() > 6 && cols[1].parse::<u32>().is_ok() {
                assert_eq!(cols[6], "0", "errors through the front in: {line}");
            }
        }
    }
    // The report is rendered from the results kept as data, and renders again from them alone.
    let json = root.join("target/bench/results.json");
    let again = Command::new(root.join("scripts/bench"))
        .arg("--render")
        .arg(&json)
        .output()
        .expect("scripts/bench --render");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        stdout.contains(String::from_utf8_lossy(&again.stdout).trim()),
        "--render of {} is not the report printed",
        json.display()
    );
    // Every run of every target answered without errors.
    let (http_part, wsgi_part) = stdout
        .split("## channel vs unix socket")
        .next()
        .unwrap_or("")
        .split_once("## WSGI")
        .expect("a WSGI section");
    let errors = wsgi_part
        .lines()
        .find_map(|l| l.strip_prefix("Errors (non-2xx, socket): "))
        .expect("the WSGI error counts");
    assert!(
        errors
            .trim_end_matches('.')
            .split(", ")
            .all(|e| e.ends_with(" 0")),
        "{errors}"
    );
    for line in http_part
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| target"))
    {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() > 5 {
            assert_eq!(cols[5], "0", "errors in: {line}");
        }
    }
}
