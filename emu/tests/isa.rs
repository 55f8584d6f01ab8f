//! The emulated warp instructions against the PTX ISA, on their own (kernels: emu/kernels/isa.cu).
//!
//! Every expected value is written here from the ISA's tables, in the ISA's terms (groupID =
//! %laneid >> 2, threadID_in_group = %laneid % 4), not from the emulator (emu/src/runtime.cpp) or the
//! library's kernels (kernels/common/tile.cuh): a layout both got wrong the same way shows up here.
//! References are to the PTX ISA sections "Warp-level matrix load instruction: ldmatrix" and
//! "Matrix Fragments for mma.m16n8k16 with floating point type".

// Loops over lanes and register indices are how the ISA's tables are written.
#![allow(clippy::needless_range_loop)]

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

use ckemu::driver::*;
use ckemu::CUresult;

mod common;
use common::{arg, check, launch, Buf};

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16

const LD_ROWS: usize = 32;
const LD_ROW_ELEMS: usize = 24; // kLdRowElems of isa.cu

/// Element (row r, column c) of 8 x 8 matrix j: distinct for every (j, r, c).
fn ld_elem(j: usize, r: usize, c: usize) -> u16 {
    (0x1000 + j * 64 + r * 8 + c) as u16
}

/// Runs ckemu_isa_ldmatrix; returns out[lane][register].
fn run_ldmatrix(trans: bool) -> Vec<[u32; 4]> {
    // Matrix j's row r lives at a scrambled shared row (13 is odd: a permutation of 0..32), padding
    // holds 0xffff, so a lane's address that is not honored reads other values.
    let slot = |j: usize, r: usize| (8 * j + r) * 13 % LD_ROWS;
    let mut image = vec![0xffffu16; LD_ROWS * LD_ROW_ELEMS];
    let mut row_of_lane = vec![0 as c_int; 32];
    for j in 0..4 {
        for r in 0..8 {
            for c in 0..8 {
                image[slot(j, r) * LD_ROW_ELEMS + c] = ld_elem(j, r, c);
            }
            // ldmatrix: for .x4, threads 8j .. 8j + 7 supply the addresses of rows 0..7 of matrix j.
            row_of_lane[8 * j + r] = slot(j, r) as c_int;
        }
    }
    let (image, rows, out) = (Buf::new(&image), Buf::new(&row_of_lane), Buf::new(&[0u32; 128]));
    let (mut pi, mut pr, mut t, mut po) = (image.ptr, rows.ptr, trans as c_int, out.ptr);
    check("ckemu_isa_ldmatrix", launch("ckemu_isa_ldmatrix", 32, &mut [arg(&mut pi), arg(&mut pr), arg(&mut t), arg(&mut po)]));
    out.read::<u32>().chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

#[test]
fn ldmatrix_x4_fragments_follow_the_isa() {
    let got = run_ldmatrix(false);
    for lane in 0..32 {
        for j in 0..4 {
            // ldmatrix fragment (.m8n8, .b16): thread t holds row t / 4, elements 2 (t % 4) and 2 (t % 4) + 1
            // of each matrix, register j for matrix j, the lower-indexed element in the lower half.
            let (row, col) = (lane / 4, 2 * (lane % 4));
            let want = ld_elem(j, row, col) as u32 | (ld_elem(j, row, col + 1) as u32) << 16;
            assert_eq!(got[lane][j], want, "lane {lane} register {j}: got {:#010x}, want {want:#010x}", got[lane][j]);
        }
    }
}

#[test]
fn ldmatrix_x4_trans_fragments_follow_the_isa() {
    let got = run_ldmatrix(true);
    for lane in 0..32 {
        for j in 0..4 {
            // .trans: the same fragment of the transposed matrix, i.e. row t / 4 of M^T is column t / 4 of M.
            let (row, col) = (lane / 4, 2 * (lane % 4));
            let want = ld_elem(j, col, row) as u32 | (ld_elem(j, col + 1, row) as u32) << 16;
            assert_eq!(got[lane][j], want, "lane {lane} register {j}: got {:#010x}, want {want:#010x}", got[lane][j]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    F16,
    BF16,
}

/// The 16-bit encoding of `v`, which must be exactly representable (the tests use small integers, inf, NaN).
fn bits16(v: f32, ty: Ty) -> u16 {
    let b = v.to_bits();
    match ty {
        Ty::BF16 => {
            assert!(b & 0xffff == 0, "{v} is not a bf16"); // (f32::NAN's payload is in the top half)
            (b >> 16) as u16
        }
        Ty::F16 => {
            let sign = ((b >> 16) & 0x8000) as u16;
            if v.is_nan() {
                return 0x7e00;
            }
            if v.is_infinite() {
                return sign | 0x7c00;
            }
            if v == 0.0 {
                return sign;
            }
            let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
            assert!((1..31).contains(&exp) && b & 0x1fff == 0, "{v} is not a normal f16");
            sign | (exp as u16) << 10 | ((b >> 13) & 0x3ff) as u16
        }
    }
}

// mma.m16n8k16 fragments (.f16 / .bf16 A and B, .f32 C and D), lane = %laneid.
fn group_id(lane: usize) -> usize {
    lane >> 2
}
fn thread_in_group(lane: usize) -> usize {
    lane % 4
}
/// A (16 x 16, .row): a_i, i = 0..7, two per .b32 register (a0, a1 in the first).
fn a_pos(lane: usize, i: usize) -> (usize, usize) {
    let row = if i < 2 || (4..6).contains(&i) { group_id(lane) } else { group_id(lane) + 8 };
    let col = thread_in_group(lane) * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
    (row, col)
}
/// B (16 x 8, .col): b_i, i = 0..3, two per register.
fn b_pos(lane: usize, i: usize) -> (usize, usize) {
    let row = thread_in_group(lane) * 2 + (i & 1) + if i >= 2 { 8 } else { 0 };
    (row, group_id(lane))
}
/// C and D (16 x 8, .f32): c_i, i = 0..3, one per register.
fn c_pos(lane: usize, i: usize) -> (usize, usize) {
    (group_id(lane) + if i >= 2 { 8 } else { 0 }, thread_in_group(lane) * 2 + (i & 1))
}

type MatA = [[f32; 16]; 16];
type MatB = [[f32; 8]; 16];
type MatC = [[f32; 8]; 16];

/// Per-lane registers of A and B (element i in half i % 2 of register i / 2, the lower-indexed in the
/// lower half) and of C.
fn encode(a: &MatA, b: &MatB, c: &MatC, ty: Ty) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let (mut ra, mut rb, mut rc) = (vec![0u32; 128], vec![0u32; 64], vec![0f32; 128]);
    for lane in 0..32 {
        for i in 0..8 {
            let (r, k) = a_pos(lane, i);
            ra[lane * 4 + i / 2] |= (bits16(a[r][k], ty) as u32) << (16 * (i % 2));
        }
        for i in 0..4 {
            let (k, n) = b_pos(lane, i);
            rb[lane * 2 + i / 2] |= (bits16(b[k][n], ty) as u32) << (16 * (i % 2));
        }
        for i in 0..4 {
            let (r, n) = c_pos(lane, i);
            rc[lane * 4 + i] = c[r][n];
        }
    }
    (ra, rb, rc)
}

/// Runs ckemu_isa_mma on per-lane registers; returns the per-lane D registers.
fn run_mma_regs(ra: &[u32], rb: &[u32], rc: &[f32], ty: Ty) -> Vec<f32> {
    let (a, b, c, d) = (Buf::new(ra), Buf::new(rb), Buf::new(rc), Buf::new(&[0f32; 128]));
    let (mut pa, mut pb, mut pc, mut bf, mut pd) = (a.ptr, b.ptr, c.ptr, (ty == Ty::BF16) as c_int, d.ptr);
    let mut args = [arg(&mut pa), arg(&mut pb), arg(&mut pc), arg(&mut bf), arg(&mut pd)];
    check("ckemu_isa_mma", launch("ckemu_isa_mma", 32, &mut args));
    d.read()
}

/// The D matrix of per-lane registers.
fn decode(rd: &[f32]) -> MatC {
    let mut d = [[f32::NAN; 8]; 16];
    for lane in 0..32 {
        for i in 0..4 {
            let (r, n) = c_pos(lane, i);
            d[r][n] = rd[lane * 4 + i];
        }
    }
    d
}

fn run_mma(a: &MatA, b: &MatB, c: &MatC, ty: Ty) -> MatC {
    let (ra, rb, rc) = encode(a, b, c, ty);
    decode(&run_mma_regs(&ra, &rb, &rc, ty))
}

/// A B + C in f64 (exact for the small integers used here).
fn reference(a: &MatA, b: &MatB, c: &MatC) -> MatC {
    let mut d = [[0f32; 8]; 16];
    for r in 0..16 {
        for n in 0..8 {
            d[r][n] = ((0..16).map(|k| a[r][k] as f64 * b[k][n] as f64).sum::<f64>() + c[r][n] as f64) as f32;
        }
    }
    d
}

fn assert_same(got: &MatC, want: &MatC, what: &str) {
    for r in 0..16 {
        for n in 0..8 {
            let (g, w) = (got[r][n], want[r][n]);
            assert!(g == w || (g.is_nan() && w.is_nan()), "{what}: D[{r}][{n}] = {g}, want {w}");
        }
    }
}

/// Small integers from a fixed LCG, in [-span, span].
fn ints(seed: u64, span: i64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as i64 % (2 * span + 1) - span) as f32
    }
}

/// Every element of A lands where the A table says: A[r][k] = 16 r + k (distinct, exact in f16 and
/// bf16) times B = the identity on k = 0..7, then on k = 8..15, shows A's columns in D.
#[test]
fn mma_a_fragment_follows_the_isa() {
    let a: MatA = std::array::from_fn(|r| std::array::from_fn(|k| (16 * r + k) as f32));
    for ty in [Ty::F16, Ty::BF16] {
        for half in 0..2 {
            let b: MatB = std::array::from_fn(|k| std::array::from_fn(|n| (k == n + 8 * half) as u8 as f32));
            let want: MatC = std::array::from_fn(|r| std::array::from_fn(|n| a[r][n + 8 * half]));
            assert_same(&run_mma(&a, &b, &[[0.0; 8]; 16], ty), &want, &format!("{ty:?}, A columns {}..", 8 * half));
        }
    }
}

/// Every element of B lands where the B table says: the identity A times distinct B shows B in D.
#[test]
fn mma_b_fragment_follows_the_isa() {
    let a: MatA = std::array::from_fn(|r| std::array::from_fn(|k| (r == k) as u8 as f32));
    let b: MatB = std::array::from_fn(|k| std::array::from_fn(|n| (8 * k + n + 1) as f32));
    for ty in [Ty::F16, Ty::BF16] {
        assert_same(&run_mma(&a, &b, &[[0.0; 8]; 16], ty), &b, &format!("{ty:?}"));
    }
}

/// D = A B + C for small integers: exact, whatever the order of the sums. The per-lane layout
/// mutated (two lanes' A registers swapped) must give a different D, so this test tells layouts apart.
#[test]
fn mma_known_answer_product() {
    for ty in [Ty::F16, Ty::BF16] {
        let mut next = ints(if ty == Ty::F16 { 1 } else { 2 }, 6);
        let a: MatA = std::array::from_fn(|_| std::array::from_fn(|_| next()));
        let b: MatB = std::array::from_fn(|_| std::array::from_fn(|_| next()));
        let c: MatC = std::array::from_fn(|_| std::array::from_fn(|_| next() * 10.0));
        let want = reference(&a, &b, &c);
        assert_same(&run_mma(&a, &b, &c, ty), &want, &format!("{ty:?}"));

        let (mut ra, rb, rc) = encode(&a, &b, &c, ty);
        for i in 0..4 {
            ra.swap(4 + i, 8 + i); // lanes 1 and 2
        }
        assert!(reference(&a, &b, &c) != decode(&run_mma_regs(&ra, &rb, &rc, ty)), "{ty:?}: a mutated layout gave the same D");
    }
}

/// inf and NaN in A reach exactly their rows of D (B > 0, so inf * b stays +inf); every other row is exact.
#[test]
fn mma_non_finite_inputs_stay_in_their_rows() {
    for ty in [Ty::F16, Ty::BF16] {
        let mut next = ints(3, 4);
        let mut a: MatA = std::array::from_fn(|_| std::array::from_fn(|_| next()));
        let b: MatB = std::array::from_fn(|_| std::array::from_fn(|_| next().abs() + 1.0));
        let c: MatC = std::array::from_fn(|_| std::array::from_fn(|_| next()));
        a[5][3] = f32::INFINITY;
        a[10][12] = f32::NAN;
        let mut want = reference(&a, &b, &c);
        want[5] = [f32::INFINITY; 8];
        want[10] = [f32::NAN; 8];
        assert_same(&run_mma(&a, &b, &c, ty), &want, &format!("{ty:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// cp.async.cg.shared.global 16, commit_group, wait_group

#[test]
fn cp_async_lands_at_wait_group_with_zero_fill() {
    // Word w of chunk (set s, lane l): distinct and never zero or the kernel's old-contents marker.
    let word = |s: usize, l: usize, w: usize| ((s as u32 + 1) << 24) | (l as u32) << 8 | (w as u32 + 1);
    let chunk = |s: usize, l: usize| -> [u32; 4] { std::array::from_fn(|w| word(s, l, w)) };
    let src: Vec<[u32; 4]> = (0..3).flat_map(|s| (0..32).map(move |l| chunk(s, l))).collect();
    let (src, out) = (Buf::new(&src), Buf::new(&[[0u32; 4]; 32 * 6]));
    let (mut ps, mut po) = (src.ptr, out.ptr);
    check("ckemu_isa_cp_async", launch("ckemu_isa_cp_async", 32, &mut [arg(&mut ps), arg(&mut po)]));
    let got: Vec<[u32; 4]> = out.read();
    // Between issue and wait the destination is undefined: the emulator shows poison (0xff bytes).
    const PENDING: [u32; 4] = [0xffffffff; 4];
    for l in 0..32 {
        let stage = |k: usize| got[l * 6 + k];
        assert_eq!(stage(0), PENDING, "lane {l}: the destination before wait_group");
        assert_eq!(stage(1), chunk(0, l), "lane {l}: after wait_group 0");
        // cp-size 16, src-size n: the first n bytes from the source, the rest zero.
        let n = l % 17;
        let bytes: Vec<u8> = chunk(0, l).iter().flat_map(|w| w.to_le_bytes()).collect();
        let want: Vec<u8> = (0..16).map(|i| if i < n { bytes[i] } else { 0 }).collect();
        let have: Vec<u8> = stage(2).iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(have, want, "lane {l}: zero fill with src-size {n}");
        assert_eq!(stage(3), chunk(1, l), "lane {l}: wait_group 1 must retire the older group");
        assert_eq!(stage(4), PENDING, "lane {l}: wait_group 1 must leave the newest group pending");
        assert_eq!(stage(5), chunk(2, l), "lane {l}: after the final wait_group 0");
    }
}

// ---------------------------------------------------------------------------------------------
// Misuse: the launch fails with CUDA_ERROR_LAUNCH_FAILED and stderr names the kernel and the cause.

extern "C" {
    fn dup(fd: c_int) -> c_int;
    fn dup2(from: c_int, to: c_int) -> c_int;
    fn close(fd: c_int) -> c_int;
}

/// Runs `f` with file descriptor 2 (the runtime's fprintf(stderr)) sent to a file; returns its text.
/// Serialized: the descriptor is process-wide.
fn capture_stderr(f: impl FnOnce() -> CUresult) -> (CUresult, String) {
    use std::os::fd::AsRawFd;
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::env::temp_dir().join(format!("ckemu-isa-stderr-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let r = unsafe {
        let saved = dup(2);
        assert!(saved >= 0 && dup2(file.as_raw_fd(), 2) >= 0, "cannot redirect stderr");
        let r = f();
        dup2(saved, 2);
        close(saved);
        r
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    eprint!("{text}"); // shown with the test's output if it fails
    (r, text)
}

fn expect_launch_failure(name: &str, cause: &str, args: &mut [*mut c_void]) {
    let (r, text) = capture_stderr(|| launch(name, 32, args));
    assert_eq!(r, CUDA_ERROR_LAUNCH_FAILED, "{name}: want CUDA_ERROR_LAUNCH_FAILED");
    assert!(text.contains(&format!("kernel `{name}`")), "{name}: stderr does not name the kernel: {text:?}");
    assert!(text.contains(cause), "{name}: stderr does not say {cause:?}: {text:?}");
    // Launches are independent: the emulator still runs a correct kernel afterwards.
    ldmatrix_x4_fragments_follow_the_isa();
}

#[test]
fn ldmatrix_from_global_memory_fails() {
    let (g, out) = (Buf::new(&[0u16; 32 * 8]), Buf::new(&[0u32; 32]));
    let (mut pg, mut po) = (g.ptr, out.ptr);
    expect_launch_failure("ckemu_isa_bad_ldmatrix_global", "__shared__", &mut [arg(&mut pg), arg(&mut po)]);
}

#[test]
fn syncthreads_reached_by_half_the_block_fails() {
    let out = Buf::new(&[0i32; 32]);
    let mut po = out.ptr;
    expect_launch_failure("ckemu_isa_bad_partial_syncthreads", "__syncthreads", &mut [arg(&mut po)]);
}

#[test]
fn lanes_at_different_collectives_fail() {
    let out = Buf::new(&[0i32; 32]);
    let mut po = out.ptr;
    expect_launch_failure("ckemu_isa_bad_divergent_collective", "divergent warp", &mut [arg(&mut po)]);
}

#[test]
fn exiting_with_an_unwaited_cp_async_group_fails() {
    let src = Buf::new(&[[0u32; 4]; 32]);
    let mut ps = src.ptr;
    expect_launch_failure("ckemu_isa_bad_unwaited_cp_async", "cp.async", &mut [arg(&mut ps)]);
}
