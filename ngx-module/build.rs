//! Passes nginx-sys' view of the nginx build (features, OS, version) to this crate as cfgs, so
//! struct layouts and cfgs agree with the nginx we load into. nginx-sys must be a direct
//! dependency for the `DEP_NGINX_*` variables to reach us.

fn main() {
    for var in [
        "FEATURES",
        "FEATURES_CHECK",
        "OS",
        "OS_CHECK",
        "VERSION_NUMBER",
        "BUILD_DIR",
    ] {
        println!("cargo::rerun-if-env-changed=DEP_NGINX_{var}");
    }
    let env = |name: &str| std::env::var(format!("DEP_NGINX_{name}")).ok();
    let check = |name: &str| env(name).unwrap_or_else(|| "any()".into());
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_feature, values({}))",
        check("FEATURES_CHECK")
    );
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_os, values({}))",
        check("OS_CHECK")
    );
    for feature in env("FEATURES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
    }
    if let Some(os) = env("OS") {
        println!("cargo::rustc-cfg=ngx_os=\"{os}\"");
    }
    if let Some(dir) = env("BUILD_DIR") {
        println!("cargo::rustc-env=NGX_POOL_NGINX_BUILD_DIR={dir}");
    }
}
