//! `include/ngx_pool.h` is generated from this crate: the committed header must be what
//! cbindgen makes of the crate now. `NGX_POOL_BLESS_HEADER=1` writes it instead.

use std::path::PathBuf;

#[test]
fn committed_header_is_generated_from_the_crate() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let header = crate_dir.join("../../include/ngx_pool.h");
    if std::env::var_os("NGX_POOL_BLESS_HEADER").is_some() {
        std::fs::write(&header, &generated).expect("write include/ngx_pool.h");
        return;
    }
    let committed = std::fs::read(&header).unwrap_or_default();
    assert!(
        committed == generated,
        "include/ngx_pool.h differs from what crates/abi generates; regenerate it with\n  \
         NGX_POOL_BLESS_HEADER=1 cargo test -p ngx-pool-abi --test header\nand commit it"
    );
}
