//! The library's device functions (kernels/common/*.cuh) on edge cases, through the emulator
//! (kernels: emu/kernels/units.cu). Expected values follow the functions' documented contracts.

use std::ffi::{c_int, c_void};

mod common;
use common::{arg, check, Buf};

fn launch(name: &str, args: &mut [*mut c_void]) {
    check(name, common::launch(name, 32, args));
}

fn find_bucket(hist: &[u32; 256], want: u32) -> (i32, u32, u32) {
    let (h, out) = (Buf::new(hist), Buf::new(&[0i32; 3]));
    let (mut hp, mut op, mut w) = (h.ptr, out.ptr, want);
    launch("ckemu_unit_find_bucket", &mut [arg(&mut hp), arg(&mut w), arg(&mut op)]);
    let v: Vec<i32> = out.read();
    (v[0], v[1] as u32, v[2] as u32)
}

/// The bin holding rank `want` (1 = the largest key), scanning from digit 255 down; `want` clamped
/// to [1, total], and (0, 0, 0) for an empty histogram.
fn expected_bucket(hist: &[u32; 256], want: u32) -> (i32, u32, u32) {
    let total: u32 = hist.iter().sum();
    if total == 0 {
        return (0, 0, 0);
    }
    let want = want.clamp(1, total);
    let mut above = 0;
    for digit in (0..256).rev() {
        if above < want && want <= above + hist[digit] {
            return (digit as i32, above, hist[digit]);
        }
        above += hist[digit];
    }
    unreachable!()
}

/// Regression: find_bucket returned digit -1 when `want` exceeded the keys of the histogram (or
/// was 0), which the radix select then shifted into its prefix as 0xff... Now the rank is clamped.
#[test]
fn find_bucket_inside_and_past_the_keys() {
    let mut hist = [0u32; 256];
    for (digit, count) in [(250, 4), (130, 1), (129, 7), (3, 2), (0, 5)] {
        hist[digit] = count;
    }
    for want in [1, 4, 5, 6, 12, 13, 19, 20, 21, 1000, 0] {
        assert_eq!(find_bucket(&hist, want), expected_bucket(&hist, want), "want {want}");
    }
    assert_eq!(find_bucket(&hist, 1000).0, 0, "past the last key: the smallest key's bin");
    assert_eq!(find_bucket(&[0u32; 256], 3), (0, 0, 0), "no keys");
}

/// warp_select_kth with k beyond the keys selects all of them: theta is the smallest key.
#[test]
fn select_kth_with_k_past_n() {
    let keys: Vec<u64> = vec![(9 << 32) | 5, (3 << 32) | 1, (7 << 32) | 2, (3 << 32) | 4];
    for (k, want) in [(1, keys[0]), (2, keys[2]), (4, keys[1]), (5, keys[1]), (40, keys[1])] {
        let (kb, out) = (Buf::new(&keys), Buf::new(&[0u64]));
        let (mut kp, mut op, mut n, mut kk) = (kb.ptr, out.ptr, keys.len() as c_int, k as c_int);
        launch("ckemu_unit_select_kth", &mut [arg(&mut kp), arg(&mut n), arg(&mut kk), arg(&mut op)]);
        assert_eq!(out.read::<u64>()[0], want, "k {k}");
    }
}
