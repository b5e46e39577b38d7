//! Fuzz target: a region whose tables hold attacker-chosen bytes never makes a reader on
//! either side panic, hang or read out of bounds.
//!
//! Input: an 8-byte seed for the operations' random choices, then patches
//! `(u32 offset, u8 length, bytes)` written over the tables after some legitimate traffic.
//! Run with `cargo +nightly fuzz run region` in `crates/channel` (see the README).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ngx_pool_channel::fuzzing::{exercise, geometry, overwrite, Rng};
use ngx_pool_channel::Region;

fuzz_target!(|data: &[u8]| {
    let region = Region::create("fuzz", geometry(), 1).expect("region");
    let (seed, mut rest) = if data.len() >= 8 {
        (u64::from_le_bytes(data[..8].try_into().unwrap()), &data[8..])
    } else {
        (0, data)
    };
    let mut rng = Rng(seed | 1);
    exercise(&region, &mut rng);
    while rest.len() >= 5 {
        let at = u32::from_le_bytes(rest[..4].try_into().unwrap()) as u64;
        let n = (rest[4] as usize).min(rest.len() - 5);
        overwrite(&region, at, &rest[5..5 + n]);
        rest = &rest[5 + n..];
    }
    exercise(&region, &mut rng);
});
