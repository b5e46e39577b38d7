//! The module built against the distribution's nginx (scripts/build-against-system-nginx) loads
//! into /usr/sbin/nginx and serves a request. Reported as skipped, with the reason, when that
//! nginx or its sources (Debian: nginx-core, nginx-dev) are not installed.

use ngx_pool_tests::{poold_path, Conf, Nginx};
use std::path::{Path, PathBuf};
use std::process::Command;

fn skip(reason: &str) {
    ngx_pool_tests::skip("system_nginx", reason);
}

#[test]
fn module_built_for_system_nginx_serves_a_request() {
    let nginx = Path::new("/usr/sbin/nginx");
    if !nginx.exists() {
        return skip("/usr/sbin/nginx is not installed (Debian package nginx-core)");
    }
    if !Path::new("/usr/share/nginx/src/conf_flags").exists() {
        return skip("nginx sources are not installed (Debian package nginx-dev)");
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let st = Command::new(root.join("scripts/build-against-system-nginx"))
        .arg("--no-install")
        .status()
        .expect("run scripts/build-against-system-nginx");
    assert!(
        st.success(),
        "building the module against the system nginx failed"
    );
    let module = root.join("target/system-nginx/target/release/libngx_pool_module.so");
    let mut conf = Conf::new(
        &format!(
            "    pool_daemon {};\n    pool app handler=builtin:echo workers=2;",
            poold_path().display()
        ),
        "    location /echo { pool_pass app; }",
    );
    conf.nginx = nginx.to_path_buf();
    conf.module = module;
    let ng = Nginx::start(conf);
    let r = ng.get("/echo/system?x=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/echo/system?x=1");
    assert!(
        r.header("Server").is_some_and(|s| s.contains("1.22")),
        "served by the system nginx"
    );
    ng.finish();
}
