//! Tells the tests where nginx-sys built nginx (the binary the tests run).
fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_BUILD_DIR");
    if let Ok(dir) = std::env::var("DEP_NGINX_BUILD_DIR") {
        println!("cargo::rustc-env=NGX_POOL_NGINX_BUILD_DIR={dir}");
    }
}
