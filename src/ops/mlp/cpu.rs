//! Oracle of the encoder ([`super`]): linear layers with the ReLU epilogue, their
//! backward (dX, dW, db) and AdamW, in f64. Each kernel of `kernels/mlp.cu` has its function
//! here (`linear_forward`, `linear_backward_data`, `linear_backward_weight`, `column_sums`,
//! `adamw_update`); `forward` / `backward` / `adamw_step` compose them into the MLP, and are also
//! the CPU backend's training step.

use super::{check_input, AdamW, Linear, MlpParams};
use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// Every layer's output of one forward pass (what the backward needs).
#[derive(Clone, Debug, PartialEq)]
pub struct MlpForward {
    pub input: Matrix<f64>,
    /// outputs[l - 1] = output of layer l (after its ReLU, if it has one).
    pub outputs: Vec<Matrix<f64>>,
}

impl MlpForward {
    /// Layer l's output, l = 0 being the input.
    pub fn layer(&self, l: usize) -> &Matrix<f64> {
        if l == 0 {
            &self.input
        } else {
            &self.outputs[l - 1]
        }
    }
    pub fn output(&self) -> &Matrix<f64> {
        self.outputs.last().unwrap_or(&self.input)
    }
}

/// d(something) / d(every parameter) and d / d(input).
#[derive(Clone, Debug, PartialEq)]
pub struct MlpGradients {
    pub layers: Vec<Linear<f64>>,
    pub input: Matrix<f64>,
}

/// f64 dot product with four partial sums (independent chains, so the CPU path is not latency
/// bound; still f64 throughout).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            s[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

fn to_f64<T: Float>(m: &Matrix<T>) -> Matrix<f64> {
    if let Some(same) = (m as &dyn std::any::Any).downcast_ref::<Matrix<f64>>() {
        return same.clone();
    }
    m.cast()
}

/// Y = X W^T + b, then ReLU when `relu` (the forward kernel). X: batch x in, W: out x in.
pub fn linear_forward<T: Float, P: Float, B: Float>(x: &Matrix<T>, w: &Matrix<P>, b: &[B], relu: bool) -> Matrix<f64> {
    let (x, w) = (to_f64(x), to_f64(w));
    let b: Vec<f64> = b.iter().map(|v| v.to_f64()).collect();
    let out = w.rows();
    let mut y = vec![0.0; x.rows() * out];
    for i in 0..x.rows() {
        for o in 0..out {
            let v = dot(x.row(i), w.row(o)) + b[o];
            y[i * out + o] = if relu { relu_f64(v) } else { v };
        }
    }
    Matrix::new(x.rows(), out, y).expect("shape by construction")
}

/// max(v, 0) with NaN kept (as torch.relu).
fn relu_f64(v: f64) -> f64 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// dX = dZ W (batch x in) from dZ (batch x out) and W (out x in); with `relu_of` (the input X of
/// this layer when it is the previous layer's ReLU output) the result is masked to where X > 0,
/// which makes it the previous layer's dZ (the backward-data kernel's fused epilogue).
pub fn linear_backward_data<T: Float, P: Float, M: Float>(dz: &Matrix<T>, w: &Matrix<P>, relu_of: Option<&Matrix<M>>) -> Matrix<f64> {
    let (dz, w) = (to_f64(dz), to_f64(w));
    let (batch, inp) = (dz.rows(), w.cols());
    let mut dx = vec![0.0; batch * inp];
    for i in 0..batch {
        let row = &mut dx[i * inp..(i + 1) * inp];
        for (o, &g) in dz.row(i).iter().enumerate() {
            if g != 0.0 {
                for (r, wv) in row.iter_mut().zip(w.row(o)) {
                    *r += g * wv;
                }
            }
        }
        if let Some(mask) = relu_of {
            for (r, m) in row.iter_mut().zip(mask.row(i)) {
                let active = m.to_f64() > 0.0; // NaN: inactive, as the kernel's `> 0` test
                if !active {
                    *r = 0.0;
                }
            }
        }
    }
    Matrix::new(batch, inp, dx).expect("shape by construction")
}

/// dW = dZ^T X (out x in) from dZ (batch x out) and the layer's input X (batch x in).
pub fn linear_backward_weight<T: Float, U: Float>(dz: &Matrix<T>, x: &Matrix<U>) -> Matrix<f64> {
    let (dz, x) = (to_f64(dz), to_f64(x));
    let (out, inp) = (dz.cols(), x.cols());
    let mut dw = vec![0.0; out * inp];
    for i in 0..dz.rows() {
        for (o, &g) in dz.row(i).iter().enumerate() {
            if g != 0.0 {
                for (d, xv) in dw[o * inp..(o + 1) * inp].iter_mut().zip(x.row(i)) {
                    *d += g * xv;
                }
            }
        }
    }
    Matrix::new(out, inp, dw).expect("shape by construction")
}

/// db = the column sums of dZ.
pub fn column_sums<T: Float>(dz: &Matrix<T>) -> Vec<f64> {
    let mut s = vec![0.0; dz.cols()];
    for i in 0..dz.rows() {
        for (a, v) in s.iter_mut().zip(dz.row(i)) {
            *a += v.to_f64();
        }
    }
    s
}

/// Every layer's output for the batch `x` (batch x input).
pub fn forward<T: Float, P: Float>(params: &MlpParams<P>, x: &Matrix<T>) -> Result<MlpForward> {
    params.validate()?;
    check_input(&params.config, x.rows(), x.cols())?;
    let input = to_f64(x);
    let mut outputs: Vec<Matrix<f64>> = Vec::with_capacity(params.layers.len());
    for (l, layer) in params.layers.iter().enumerate() {
        let prev = if l == 0 { &input } else { &outputs[l - 1] };
        let y = linear_forward(prev, &layer.weight, &layer.bias, params.config.relu(l + 1));
        outputs.push(y);
    }
    Ok(MlpForward { input, outputs })
}

/// Gradients of a scalar whose gradient with respect to the MLP's output is `d_output`
/// (batch x output), through every layer: ReLU' is taken as `[y > 0]` (torch's convention at 0).
pub fn backward<P: Float>(params: &MlpParams<P>, fwd: &MlpForward, d_output: &Matrix<f64>) -> Result<MlpGradients> {
    params.validate()?;
    let batch = fwd.input.rows();
    if (d_output.rows(), d_output.cols()) != (batch, params.config.output()) {
        return Err(Error::shape(
            "d_output",
            format!("{batch} x {} (batch x output)", params.config.output()),
            format!("{} x {}", d_output.rows(), d_output.cols()),
        ));
    }
    let layers = params.layers.len();
    if fwd.outputs.len() != layers {
        return Err(Error::shape("fwd", format!("{layers} layer outputs"), format!("{}", fwd.outputs.len())));
    }
    // dZ of the last layer (linear): the upstream gradient itself.
    let mut dz = d_output.clone();
    let mut grads: Vec<Linear<f64>> = Vec::with_capacity(layers);
    let mut d_input = None;
    for l in (1..=layers).rev() {
        let x = fwd.layer(l - 1);
        grads.push(Linear { weight: linear_backward_weight(&dz, x), bias: column_sums(&dz) });
        // dZ of layer l - 1: dX masked by its ReLU (the input of layer 1 is not masked).
        let mask = if l > 1 && params.config.relu(l - 1) { Some(x) } else { None };
        let dx = linear_backward_data(&dz, &params.layers[l - 1].weight, mask);
        if l == 1 {
            d_input = Some(dx);
        } else {
            dz = dx;
        }
    }
    grads.reverse();
    Ok(MlpGradients { layers: grads, input: d_input.expect("at least one layer") })
}

/// AdamW moments of every parameter (f32, as the GPU keeps them) and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    pub m: Vec<Linear<f32>>,
    pub v: Vec<Linear<f32>>,
    /// Steps taken so far.
    pub step: u64,
}

impl AdamState {
    pub fn new(params: &MlpParams<f32>) -> Self {
        let zeros = |l: &Linear<f32>| Linear { weight: l.weight.map(|_| 0.0f32), bias: vec![0.0; l.bias.len()] };
        AdamState { m: params.layers.iter().map(zeros).collect(), v: params.layers.iter().map(zeros).collect(), step: 0 }
    }
}

/// One AdamW update of a tensor (the kernel's oracle), f64 arithmetic on f32 state:
/// p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
/// p <- p - lr (m / c1) / (sqrt(v / c2) + eps), with c1, c2 the bias corrections of this step.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update<G: Float>(
    p: &mut [f32],
    g: &[G],
    m: &mut [f32],
    v: &mut [f32],
    hp: &AdamW,
    weight_decay: f32,
    corrections: (f64, f64),
) {
    let (lr, b1, b2, eps, wd) = (hp.lr as f64, hp.beta1 as f64, hp.beta2 as f64, hp.eps as f64, weight_decay as f64);
    for k in 0..p.len() {
        let g = g[k].to_f64();
        let mk = b1 * m[k] as f64 + (1.0 - b1) * g;
        let vk = b2 * v[k] as f64 + (1.0 - b2) * g * g;
        let pk = p[k] as f64 * (1.0 - lr * wd) - lr * (mk / corrections.0) / ((vk / corrections.1).sqrt() + eps);
        m[k] = mk as f32;
        v[k] = vk as f32;
        p[k] = pk as f32;
    }
}

/// One AdamW step over the whole MLP (weights decayed, biases not).
pub fn adamw_step(params: &mut MlpParams<f32>, grads: &MlpGradients, state: &mut AdamState, hp: &AdamW) -> Result<()> {
    hp.validate()?;
    params.validate()?;
    if grads.layers.len() != params.layers.len() || state.m.len() != params.layers.len() {
        return Err(Error::shape("grads", format!("{} layers", params.layers.len()), format!("{}", grads.layers.len())));
    }
    for (l, g) in grads.layers.iter().enumerate() {
        let p = &params.layers[l];
        if g.weight.data().len() != p.weight.data().len() || g.bias.len() != p.bias.len() {
            return Err(Error::shape("grads", format!("layer {} of the params' shapes", l + 1), "other shapes".to_string()));
        }
    }
    state.step += 1;
    let corrections = hp.bias_corrections(state.step);
    for (l, g) in grads.layers.iter().enumerate() {
        let (p, m, v) = (&mut params.layers[l], &mut state.m[l], &mut state.v[l]);
        adamw_update(p.weight.data_mut(), g.weight.data(), m.weight.data_mut(), v.weight.data_mut(), hp, hp.weight_decay, corrections);
        adamw_update(&mut p.bias, &g.bias, &mut m.bias, &mut v.bias, hp, 0.0, corrections);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::mlp::MlpConfig;
    use crate::rng::SplitMix64;

    fn random(rows: usize, cols: usize, seed: u64) -> Matrix<f64> {
        let mut rng = SplitMix64::new(seed);
        Matrix::from_fn(rows, cols, |_, _| rng.normal())
    }

    #[test]
    fn linear_hand_computed() {
        let x = Matrix::new(2, 3, vec![1.0, 2.0, 3.0, -1.0, 0.0, 1.0]).unwrap();
        let w = Matrix::new(2, 3, vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5]).unwrap();
        let b = [0.5, -4.0];
        // Row 0: (1 - 3 + 0.5, 3 - 4) = (-1.5, -1); row 1: (-1 - 1 + 0.5, 0 - 4) = (-1.5, -4).
        assert_eq!(linear_forward(&x, &w, &b, false).data(), &[-1.5, -1.0, -1.5, -4.0]);
        assert_eq!(linear_forward(&x, &w, &b, true).data(), &[0.0, 0.0, 0.0, 0.0]);
        let dz = Matrix::new(2, 2, vec![1.0, 2.0, 0.0, -1.0]).unwrap();
        // dX = dZ W: row 0 = 1 (1, 0, -1) + 2 (.5, .5, .5) = (2, 1, 0); row 1 = -(.5, .5, .5).
        assert_eq!(linear_backward_data(&dz, &w, None::<&Matrix<f64>>).data(), &[2.0, 1.0, 0.0, -0.5, -0.5, -0.5]);
        // Masked by X > 0: row 0 keeps all, row 1 keeps only column 2.
        assert_eq!(linear_backward_data(&dz, &w, Some(&x)).data(), &[2.0, 1.0, 0.0, 0.0, 0.0, -0.5]);
        // dW = dZ^T X: row 0 = 1 (1, 2, 3) + 0; row 1 = 2 (1, 2, 3) - (-1, 0, 1) = (3, 4, 5).
        assert_eq!(linear_backward_weight(&dz, &x).data(), &[1.0, 2.0, 3.0, 3.0, 4.0, 5.0]);
        assert_eq!(column_sums(&dz), vec![1.0, 1.0]);
    }

    /// Central differences of f(params, x) = sum(R * output) against the analytic gradients.
    #[test]
    fn backward_matches_finite_differences() {
        let config = MlpConfig::new(7, &[9, 6], 5, &[4, 3]).unwrap();
        let mut params = MlpParams::<f64>::init(&config, 11).unwrap();
        // Non-zero biases, so the bias path is exercised too.
        let mut rng = SplitMix64::new(12);
        for l in &mut params.layers {
            l.bias.iter_mut().for_each(|b| *b = 0.3 * rng.normal());
        }
        let x = random(5, 7, 13);
        let r = random(5, 3, 14);
        let f = |p: &MlpParams<f64>, x: &Matrix<f64>| -> f64 {
            forward(p, x).unwrap().output().data().iter().zip(r.data()).map(|(a, b)| a * b).sum()
        };
        let fwd = forward(&params, &x).unwrap();
        let grads = backward(&params, &fwd, &r).unwrap();
        let h = 1e-6;
        let close = |num: f64, ana: f64, what: &str| {
            assert!((num - ana).abs() <= 1e-6 * (1.0 + ana.abs()), "{what}: numeric {num}, analytic {ana}")
        };
        for l in 0..params.layers.len() {
            for k in 0..params.layers[l].weight.data().len() {
                let mut p = params.clone();
                p.layers[l].weight.data_mut()[k] += h;
                let up = f(&p, &x);
                p.layers[l].weight.data_mut()[k] -= 2.0 * h;
                close((up - f(&p, &x)) / (2.0 * h), grads.layers[l].weight.data()[k], &format!("dW{} [{k}]", l + 1));
            }
            for k in 0..params.layers[l].bias.len() {
                let mut p = params.clone();
                p.layers[l].bias[k] += h;
                let up = f(&p, &x);
                p.layers[l].bias[k] -= 2.0 * h;
                close((up - f(&p, &x)) / (2.0 * h), grads.layers[l].bias[k], &format!("db{} [{k}]", l + 1));
            }
        }
        for k in 0..x.data().len() {
            let mut xp = x.clone();
            xp.data_mut()[k] += h;
            let up = f(&params, &xp);
            xp.data_mut()[k] -= 2.0 * h;
            close((up - f(&params, &xp)) / (2.0 * h), grads.input.data()[k], &format!("dX [{k}]"));
        }
        // Some ReLU units are off: the masks are really exercised.
        assert!(fwd.outputs[0].data().contains(&0.0) && fwd.outputs[0].data().iter().any(|&v| v > 0.0));
    }

    #[test]
    fn argument_errors() {
        let config = MlpConfig::new(4, &[3], 2, &[]).unwrap();
        let params = MlpParams::<f32>::init(&config, 1).unwrap();
        let err = forward(&params, &random(2, 5, 1)).unwrap_err();
        assert!(matches!(err, Error::Shape { arg: "x", .. }), "{err}");
        let fwd = forward(&params, &random(2, 4, 1)).unwrap();
        let err = backward(&params, &fwd, &random(2, 3, 1)).unwrap_err();
        assert!(matches!(err, Error::Shape { arg: "d_output", .. }), "{err}");
    }

    #[test]
    fn adamw_first_steps_by_hand() {
        // Step 1 with g: m = (1-b1) g, v = (1-b2) g^2, m/c1 = g, v/c2 = g^2, so the step is
        // lr * g / (|g| + eps) ~ lr * sign(g), after the decay p (1 - lr wd).
        let hp = AdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.5 };
        let mut p = [1.0f32, -2.0, 0.0];
        let g = [0.5f64, -3.0, 0.0];
        let (mut m, mut v) = ([0.0f32; 3], [0.0f32; 3]);
        adamw_update(&mut p, &g, &mut m, &mut v, &hp, hp.weight_decay, hp.bias_corrections(1));
        let want = [1.0 * 0.95 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 * 0.95 + 0.1 * 3.0 / (3.0 + 1e-8), 0.0];
        for k in 0..3 {
            assert!((p[k] as f64 - want[k]).abs() < 1e-6, "p[{k}] = {}, want {}", p[k], want[k]);
        }
        // The betas are f32 (0.999f32 = 0.99900001...), so the moments match to about 1e-7.
        assert!((m[1] as f64 + 0.3).abs() < 1e-6 && (v[1] as f64 - 0.009).abs() < 1e-6, "m {} v {}", m[1], v[1]);
        // Step 2 with the same gradient: the moments' estimates are still g and g^2.
        let before = p;
        adamw_update(&mut p, &g, &mut m, &mut v, &hp, 0.0, hp.bias_corrections(2));
        assert!((before[0] - p[0] - 0.1).abs() < 1e-5, "{} -> {}", before[0], p[0]);
    }

    #[test]
    fn adamw_step_trains_a_tiny_regression() {
        // Fit y = 2 x0 - x1 with a 2 -> 8 -> 1 MLP: the loss must fall by two orders of magnitude.
        let config = MlpConfig::new(2, &[], 8, &[1]).unwrap();
        let mut params = MlpParams::<f32>::init(&config, 5).unwrap();
        let mut state = AdamState::new(&params);
        let hp = AdamW { lr: 1e-2, weight_decay: 0.0, ..AdamW::default() };
        let x = random(64, 2, 6);
        let y: Vec<f64> = (0..64).map(|i| 2.0 * x.get(i, 0) - x.get(i, 1)).collect();
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..500 {
            let fwd = forward(&params, &x).unwrap();
            let out = fwd.output();
            last = (0..64).map(|i| (out.get(i, 0) - y[i]).powi(2)).sum::<f64>() / 64.0;
            first.get_or_insert(last);
            let d = Matrix::from_fn(64, 1, |i, _| 2.0 * (out.get(i, 0) - y[i]) / 64.0);
            let grads = backward(&params, &fwd, &d).unwrap();
            adamw_step(&mut params, &grads, &mut state, &hp).unwrap();
        }
        assert_eq!(state.step, 500);
        assert!(last < first.unwrap() / 100.0, "mse {} -> {last}", first.unwrap());
    }
}
