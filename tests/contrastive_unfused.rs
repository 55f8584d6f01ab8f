//! The unfused GPU path (src/ops/contrastive/unfused.rs, kernels/contrastive_unfused.cu): its
//! memory plan, its forward and backward against the f64 oracle on the harness shapes of every
//! loss kind, its agreement with the fused path, and its errors. GPU parts skip without a GPU.

mod common;

use common::contrastive_harness::{assert_grad_close, download, for_each_harness_case, shapes_for, upload_inputs, upload_slice};
use common::{gpu_or_skip, random_matrix, report_gpu_skip};
use contrastive_kernels::ops::contrastive::cpu::{backward, forward};
use contrastive_kernels::ops::contrastive::gpu::{self as loss_ops, Upstream};
use contrastive_kernels::ops::contrastive::{unfused, ContrastiveLoss, LossInputs, Reduction};
use contrastive_kernels::{bf16, f16, DType, Error, FloatElement, Gpu, Matrix};

/// The plan adds up the buffers the path allocates: checked by hand at one self-geometry and one
/// pairwise + prototypes shape.
#[test]
fn extra_bytes_by_hand() {
    // Self geometry, n = 8192, d = 128, bf16: unit rows 2 MiB, norms 32 KiB, S 256 MiB,
    // per_anchor / lse / positives 3 x 32 KiB, loss + first_empty + 9 check flags 44 B.
    let mib = 1usize << 20;
    let b = unfused::extra_bytes(8192, None, 0, 128, DType::BF16);
    assert_eq!(b.forward, 2 * mib + 32768 + 256 * mib + 3 * 32768 + 44);
    // Backward: upstream 4 B, coef_a / coef_b 2 x 32 KiB, scalars 8 B, gemm scalars 12 B, G 128 MiB, dU 4 MiB.
    assert_eq!(b.backward, 4 + 2 * 32768 + 8 + 12 + 128 * mib + 4 * mib);
    assert_eq!(b.peak(), b.forward + b.backward);
    // Pairwise, 4 anchors x 6 keys + 2 prototypes, d = 3, f16: S and G are 4 x 8.
    let p = unfused::extra_bytes(4, Some(6), 2, 3, DType::F16);
    assert_eq!(p.forward, (12 * 2 + 16) + (18 * 2 + 24) + (6 * 2 + 8) + 32 * 4 + 3 * 16 + 44);
    assert_eq!(p.backward, 4 + 2 * 16 + 8 + 12 + 32 * 2 + (12 + 18 + 6) * 4);
    // The reference point: n = 65536, d = 128 needs over 16 GiB (S alone is 16 GiB).
    assert!(unfused::extra_bytes(65536, None, 0, 128, DType::BF16).forward > 16 << 30);
}

/// The GPU and cuBLAS, or None after a skip line. Under CONTRASTIVE_KERNELS_REQUIRE_GPU=1 a missing
/// cuBLAS is a failure like a missing GPU.
fn gpu_with_cublas(test: &str) -> Option<Gpu> {
    let gpu = gpu_or_skip(test)?;
    let x: Matrix<f16> = random_matrix(4, 8, 1);
    let dev = upload_inputs(&gpu, &LossInputs::new(&x, &[0, 1, 0, 1]));
    match unfused::forward(&gpu, &ContrastiveLoss::nt_xent(0.5), &dev.view()) {
        Err(e @ Error::Blas { .. }) => {
            if std::env::var("CONTRASTIVE_KERNELS_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: cuBLAS is required (CONTRASTIVE_KERNELS_REQUIRE_GPU=1) but: {e}");
            }
            report_gpu_skip(test, e);
            None
        }
        other => {
            other.unwrap();
            Some(gpu)
        }
    }
}

/// Forward against the oracle: DESIGN.md section 7's loss bounds (2e-3 f16, 5e-3 bf16), per-anchor
/// values and LSE relative to the largest |L_i| / |LSE|, |P(i)| exact; the bytes it reports equal
/// the plan's.
fn check_forward<T: FloatElement>(gpu: &Gpu, rel: f64) {
    for_each_harness_case::<T>(shapes_for(Some(gpu)), &mut |what, loss, inputs| {
        let n = inputs.features.rows();
        let dev = upload_inputs(gpu, inputs);
        if inputs.anchor_rows.is_some_and(|m| m < n) {
            // The baseline computes the whole matrix: it refuses a restriction of the anchors.
            match unfused::forward(gpu, loss, &dev.view()) {
                Err(contrastive_kernels::Error::InvalidArgument { arg, .. }) => assert_eq!(arg, "anchor_rows", "{what}"),
                Err(e) => panic!("{what}: expected an anchor_rows error, got {e}"),
                Ok(_) => panic!("{what}: anchor_rows accepted by the unfused baseline"),
            }
            return;
        }
        let want = forward(loss, inputs).unwrap();
        let got = unfused::forward(gpu, loss, &dev.view()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            (got.loss as f64 - want.loss).abs() <= rel * want.loss.abs().max(1e-3),
            "{what}: loss {} vs oracle {}",
            got.loss,
            want.loss
        );
        let per_anchor = download(gpu, &got.per_anchor, n);
        let lse = download(gpu, &got.saved.lse, n);
        let positives = download(gpu, &got.saved.positives, n);
        let scale = want.per_anchor.iter().chain(want.lse.iter().filter(|v| v.is_finite())).fold(0.0f64, |m, v| m.max(v.abs()));
        for i in 0..n {
            assert_eq!(positives[i] as usize, want.positive_count[i], "{what}: |P({i})|");
            assert!(
                (per_anchor[i] as f64 - want.per_anchor[i]).abs() <= rel * scale,
                "{what}: L_{i} {} vs {}",
                per_anchor[i],
                want.per_anchor[i]
            );
            let (g, w) = (lse[i] as f64, want.lse[i]);
            assert!(g == w || (g - w).abs() <= rel * scale, "{what}: lse_{i} {g} vs {w}");
        }
        let keys = inputs.keys.as_ref().map(|k| k.features.rows());
        let centers = inputs.prototypes.as_ref().map_or(0, |p| p.centers.rows());
        let plan = unfused::extra_bytes(n, keys, centers, inputs.features.cols(), T::DTYPE);
        assert_eq!(got.bytes_allocated, plan.forward, "{what}: forward bytes vs plan");
    });
}

/// The upstream of the harness: dLoss = 1.5 for Mean, dL_i = 0.5 + 0.25 (i mod 7) for PerAnchor.
fn upstream_for(reduction: Reduction, n: usize) -> Vec<f32> {
    if reduction == Reduction::PerAnchor {
        (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect()
    } else {
        vec![1.5]
    }
}

/// Backward against the oracle under Mean and PerAnchor: gradients within 1e-2 x max |grad|
/// (DESIGN.md section 7, f16 / bf16), features, keys and prototypes; the measured peak equals the plan.
fn check_backward<T: FloatElement>(gpu: &Gpu, rel: f64) {
    for_each_harness_case::<T>(shapes_for(Some(gpu)), &mut |what, loss, inputs| {
        if inputs.anchor_rows.is_some() {
            return; // the fused path's alone (check_forward sees the baseline refuse it)
        }
        for reduction in [Reduction::Mean, Reduction::PerAnchor] {
            let loss = loss.with_reduction(reduction);
            let n = inputs.features.rows();
            let upstream = upstream_for(reduction, n);
            let want = backward(&loss, inputs, &upstream.iter().map(|&v| v as f64).collect::<Vec<_>>()).unwrap();
            let dev = upload_inputs(gpu, inputs);
            let fwd = unfused::forward(gpu, &loss, &dev.view()).unwrap();
            let per_row = upload_slice(gpu, &upstream);
            let up = if reduction == Reduction::PerAnchor { Upstream::PerRow(&per_row) } else { Upstream::Value(upstream[0]) };
            let (got, peak) = unfused::backward_measured(gpu, &loss, &dev.view(), fwd.saved, up).unwrap_or_else(|e| panic!("{what}: {e}"));
            let what = format!("{what} {reduction:?}");
            assert_grad_close(&format!("{what} dfeatures"), &got.features.download(gpu).unwrap(), &want.features, rel, 0.0);
            match (&got.keys, &want.keys) {
                (Some(g), Some(w)) => assert_grad_close(&format!("{what} dkeys"), &g.download(gpu).unwrap(), w, rel, 0.0),
                (None, None) => {}
                _ => panic!("{what}: key gradients present on one side only"),
            }
            match (&got.prototypes, &want.prototypes) {
                (Some(g), Some(w)) => assert_grad_close(&format!("{what} dprototypes"), &g.download(gpu).unwrap(), w, rel, 0.0),
                (None, None) => {}
                _ => panic!("{what}: prototype gradients present on one side only"),
            }
            if reduction == Reduction::Mean {
                let keys = inputs.keys.as_ref().map(|k| k.features.rows());
                let centers = inputs.prototypes.as_ref().map_or(0, |p| p.centers.rows());
                assert_eq!(
                    peak,
                    unfused::extra_bytes(n, keys, centers, inputs.features.cols(), T::DTYPE).peak(),
                    "{what}: peak bytes vs plan"
                );
            }
        }
    });
}

#[test]
fn gpu_unfused_forward_matches_oracle() {
    let Some(gpu) = gpu_with_cublas("gpu_unfused_forward_matches_oracle") else { return };
    check_forward::<f16>(&gpu, 2e-3);
    check_forward::<bf16>(&gpu, 5e-3);
}

/// f16 within DESIGN.md's 1e-2 x max |grad|. bf16 within 2e-2: this baseline keeps PyTorch's
/// numerics, dU = G U with U the unit rows rounded to bf16, and the normalization backward then
/// removes a large radial part, so U's per-element rounding leaks into the small tangential
/// gradient (1.1e-2 x max |grad| for cluster_aware at d = 3, measured on the CPU emulator). The
/// fused path avoids it (kernels/contrastive.cu, the backward's comment) and keeps 1e-2.
#[test]
fn gpu_unfused_backward_matches_oracle() {
    let Some(gpu) = gpu_with_cublas("gpu_unfused_backward_matches_oracle") else { return };
    check_backward::<f16>(&gpu, 1e-2);
    check_backward::<bf16>(&gpu, 2e-2);
}

/// The two GPU paths on the same device inputs: both are within the oracle bounds, so they agree
/// within twice those bounds (loss, L_i, LSE, |P(i)| exactly; gradients 2e-2 x max |grad|).
fn check_fused_vs_unfused<T: FloatElement>(gpu: &Gpu, rel: f64) {
    for_each_harness_case::<T>(shapes_for(Some(gpu)), &mut |what, loss, inputs| {
        if inputs.anchor_rows.is_some() {
            return; // the fused path's alone
        }
        let n = inputs.features.rows();
        let dev = upload_inputs(gpu, inputs);
        let fused = loss_ops::forward(gpu, loss, &dev.view()).unwrap_or_else(|e| panic!("{what} fused: {e}"));
        let plain = unfused::forward(gpu, loss, &dev.view()).unwrap_or_else(|e| panic!("{what} unfused: {e}"));
        assert!(
            (fused.loss - plain.loss).abs() as f64 <= 2.0 * rel * (plain.loss.abs() as f64).max(1e-3),
            "{what}: loss fused {} vs unfused {}",
            fused.loss,
            plain.loss
        );
        let (fa, ua) = (download(gpu, &fused.per_anchor, n), download(gpu, &plain.per_anchor, n));
        let (fl, ul) = (download(gpu, &fused.saved.lse, n), download(gpu, &plain.saved.lse, n));
        assert_eq!(download(gpu, &fused.saved.positives, n), download(gpu, &plain.saved.positives, n), "{what}: |P(i)|");
        let scale = ua.iter().chain(ul.iter().filter(|v| v.is_finite())).fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        for i in 0..n {
            assert!(((fa[i] - ua[i]) as f64).abs() <= 2.0 * rel * scale, "{what}: L_{i} fused {} vs unfused {}", fa[i], ua[i]);
            assert!(
                fl[i] == ul[i] || ((fl[i] - ul[i]) as f64).abs() <= 2.0 * rel * scale,
                "{what}: lse_{i} fused {} vs unfused {}",
                fl[i],
                ul[i]
            );
        }
        let gf = loss_ops::backward(gpu, loss, &dev.view(), fused.saved, Upstream::Value(1.0)).unwrap();
        let gu = unfused::backward(gpu, loss, &dev.view(), plain.saved, Upstream::Value(1.0)).unwrap();
        let as_f64 = |m: &Matrix<T>| Matrix::from_fn(m.rows(), m.cols(), |i, j| m.get(i, j).to_f64());
        assert_grad_close(
            &format!("{what} dfeatures fused vs unfused"),
            &gf.features.download(gpu).unwrap(),
            &as_f64(&gu.features.download(gpu).unwrap()),
            2e-2,
            0.0,
        );
        if let (Some(a), Some(b)) = (&gf.keys, &gu.keys) {
            assert_grad_close(
                &format!("{what} dkeys fused vs unfused"),
                &a.download(gpu).unwrap(),
                &as_f64(&b.download(gpu).unwrap()),
                2e-2,
                0.0,
            );
        }
        if let (Some(a), Some(b)) = (&gf.prototypes, &gu.prototypes) {
            assert_grad_close(
                &format!("{what} dprototypes fused vs unfused"),
                &a.download(gpu).unwrap(),
                &as_f64(&b.download(gpu).unwrap()),
                2e-2,
                0.0,
            );
        }
        assert_eq!((gf.keys.is_some(), gf.prototypes.is_some()), (gu.keys.is_some(), gu.prototypes.is_some()), "{what}: gradient sets");
    });
}

#[test]
fn gpu_fused_and_unfused_agree() {
    let Some(gpu) = gpu_with_cublas("gpu_fused_and_unfused_agree") else { return };
    check_fused_vs_unfused::<f16>(&gpu, 2e-3);
    check_fused_vs_unfused::<bf16>(&gpu, 5e-3);
}

#[test]
fn gpu_unfused_errors() {
    let Some(gpu) = gpu_with_cublas("gpu_unfused_errors") else { return };
    let nt = ContrastiveLoss::nt_xent(0.5);
    // An n x n matrix that cannot fit (200000^2 f32 = 149 GiB): refused before allocating, naming the shape.
    let n = 200_000;
    let x: Matrix<f16> = random_matrix(n, 1, 3);
    let instance: Vec<i32> = (0..n as i32).map(|i| i / 2).collect();
    let dev = upload_inputs(&gpu, &LossInputs::new(&x, &instance));
    match unfused::forward(&gpu, &nt, &dev.view()) {
        Err(Error::InvalidArgument { arg: "features", reason }) => assert!(reason.contains("200000 x 200000"), "{reason}"),
        Err(e) => panic!("expected a features error naming the shape, got {e}"),
        Ok(_) => panic!("a 200000 x 200000 f32 matrix cannot fit a GPU of this era"),
    }
    drop(dev);

    // Saved statistics of other inputs, the wrong upstream kind, an empty-positive anchor.
    let x: Matrix<bf16> = random_matrix(6, 8, 4);
    let y: Matrix<bf16> = random_matrix(6, 8, 5);
    let instance = [0, 1, 2, 0, 1, 2];
    let (dx, dy) = (upload_inputs(&gpu, &LossInputs::new(&x, &instance)), upload_inputs(&gpu, &LossInputs::new(&y, &instance)));
    let saved = unfused::forward(&gpu, &nt, &dx.view()).unwrap().saved;
    assert!(matches!(
        unfused::backward(&gpu, &nt, &dy.view(), saved, Upstream::Value(1.0)),
        Err(Error::InvalidArgument { arg: "saved", .. })
    ));
    let saved = unfused::forward(&gpu, &nt, &dx.view()).unwrap().saved;
    let per_row = upload_slice(&gpu, &[1.0f32; 6]);
    assert!(matches!(
        unfused::backward(&gpu, &nt, &dx.view(), saved, Upstream::PerRow(&per_row)),
        Err(Error::InvalidArgument { arg: "upstream", .. })
    ));
    let lonely = upload_inputs(&gpu, &LossInputs::new(&x, &[0, 1, 2, 0, 1, 7]));
    match unfused::forward(&gpu, &nt, &lonely.view()) {
        Err(Error::InvalidArgument { arg: "instance", reason }) => assert!(reason.contains("row 2"), "{reason}"),
        Err(e) => panic!("expected the empty-positive error, got {e}"),
        Ok(_) => panic!("row 2 has no positive"),
    }
}
