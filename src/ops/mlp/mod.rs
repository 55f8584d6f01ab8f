//! The minimal encoder: an MLP `input -> hidden (ReLU) ... -> feature (ReLU) -> head (ReLU) ... ->
//! output (linear)`, its deterministic initialisation and AdamW. The types here are shared by both
//! backends; the oracle is [`cpu`], the kernels are `kernels/mlp.cu`, driven by the
//! `*_raw` functions of [`gpu`] (caller memory, any stream) and by [`gpu::GpuMlp`] (this crate's buffers).
//!
//! GPU precision: f32 master weights and AdamW state; a T = f16 / bf16 compute copy of the
//! weights, T activations and upstream gradients, f32 accumulation in the tensor cores, f32 weight
//! and bias gradients.
//!
//! Layer l (1..=L) maps `widths[l-1]` -> `widths[l]`: y = x W^T + b with W stored out x in (row-major,
//! as torch.nn.Linear), followed by ReLU on every layer except the last. The representation used
//! for scoring is the (post-ReLU) output of `feature_layer`; the layers after it are the
//! projection head the loss sees (SimCLR's h and z).

pub mod cpu;
pub mod gpu;

use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::rng::SplitMix64;

/// The widths of the MLP and which layer's output is the feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlpConfig {
    /// `widths[0]` = input, `widths[L]` = output; L >= 1 layers.
    pub widths: Vec<usize>,
    /// 1..=L: the layer whose output is the representation (SimCLR's h).
    pub feature_layer: usize,
}

impl MlpConfig {
    /// `input -> hidden... -> feature -> head...`; with an empty `head` the feature layer is the
    /// output (and linear).
    pub fn new(input: usize, hidden: &[usize], feature: usize, head: &[usize]) -> Result<Self> {
        let mut widths = vec![input];
        widths.extend_from_slice(hidden);
        widths.push(feature);
        widths.extend_from_slice(head);
        let config = MlpConfig { widths, feature_layer: hidden.len() + 1 };
        config.validate()?;
        Ok(config)
    }

    pub fn layers(&self) -> usize {
        self.widths.len().saturating_sub(1)
    }
    pub fn input(&self) -> usize {
        self.widths[0]
    }
    pub fn output(&self) -> usize {
        *self.widths.last().unwrap_or(&0)
    }
    pub fn feature(&self) -> usize {
        self.widths[self.feature_layer]
    }
    /// Whether layer l (1..=L) ends in a ReLU: every layer but the last.
    pub fn relu(&self, layer: usize) -> bool {
        layer < self.layers()
    }

    pub fn validate(&self) -> Result<()> {
        if self.widths.len() < 2 {
            return Err(Error::invalid("widths", "an MLP needs an input width and at least one layer"));
        }
        if let Some(k) = self.widths.iter().position(|&w| w == 0 || w > i32::MAX as usize) {
            return Err(Error::invalid("widths", format!("widths are in 1..2^31; entry {k} is {}", self.widths[k])));
        }
        if !(1..=self.layers()).contains(&self.feature_layer) {
            return Err(Error::invalid("feature_layer", format!("must be in 1..={}, got {}", self.layers(), self.feature_layer)));
        }
        Ok(())
    }

    /// Number of weights plus biases.
    pub fn parameter_count(&self) -> usize {
        self.widths.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }
}

/// One layer's parameters: `weight` is out x in (row-major), `bias` has `out` entries.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear<P> {
    pub weight: Matrix<P>,
    pub bias: Vec<P>,
}

/// The MLP's parameters. `P = f32` are the master weights both backends train; the oracle also
/// runs on `P = f64` (finite-difference tests).
#[derive(Clone, Debug, PartialEq)]
pub struct MlpParams<P = f32> {
    pub config: MlpConfig,
    pub layers: Vec<Linear<P>>,
}

impl<P: Float> MlpParams<P> {
    /// He-uniform weights, U(-sqrt(6 / fan_in), sqrt(6 / fan_in)) (keeps the activations' scale
    /// through ReLU layers; torch's default is sqrt(3) times smaller), zero biases; a pure
    /// function of `seed` (SplitMix64, layer by layer, row by row).
    pub fn init(config: &MlpConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = SplitMix64::new(seed);
        let layers = config
            .widths
            .windows(2)
            .map(|w| {
                let (fan_in, out) = (w[0], w[1]);
                let bound = (6.0 / fan_in as f64).sqrt();
                let weight = Matrix::from_fn(out, fan_in, |_, _| P::from_f64(bound * (2.0 * rng.uniform() - 1.0)));
                Linear { weight, bias: vec![P::from_f64(0.0); out] }
            })
            .collect();
        Ok(MlpParams { config: config.clone(), layers })
    }

    /// Element-wise conversion (f32 master weights to the f64 oracle, say).
    pub fn cast<Q: Float>(&self) -> MlpParams<Q> {
        MlpParams {
            config: self.config.clone(),
            layers: self
                .layers
                .iter()
                .map(|l| Linear { weight: l.weight.cast(), bias: l.bias.iter().map(|b| Q::from_f64(b.to_f64())).collect() })
                .collect(),
        }
    }

    /// Checks that the tensors have the shapes the config says.
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        if self.layers.len() != self.config.layers() {
            return Err(Error::shape(
                "layers",
                format!("{} layers (the config's)", self.config.layers()),
                format!("{}", self.layers.len()),
            ));
        }
        for (l, (layer, w)) in self.layers.iter().zip(self.config.widths.windows(2)).enumerate() {
            if (layer.weight.rows(), layer.weight.cols()) != (w[1], w[0]) {
                return Err(Error::shape(
                    "layers.weight",
                    format!("layer {} weight {} x {} (out x in)", l + 1, w[1], w[0]),
                    format!("{} x {}", layer.weight.rows(), layer.weight.cols()),
                ));
            }
            if layer.bias.len() != w[1] {
                return Err(Error::shape("layers.bias", format!("layer {} bias of {}", l + 1, w[1]), format!("{}", layer.bias.len())));
            }
        }
        Ok(())
    }
}

/// AdamW hyper-parameters (Loshchilov & Hutter; torch.optim.AdamW's update). Weight decay is
/// applied to the weights, not the biases (the usual parameter-group choice).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 }
    }
}

impl AdamW {
    pub fn validate(&self) -> Result<()> {
        let check = |arg: &'static str, v: f32, ok: bool| if ok { Ok(()) } else { Err(Error::invalid(arg, format!("out of range: {v}"))) };
        check("lr", self.lr, self.lr >= 0.0 && self.lr.is_finite())?;
        check("beta1", self.beta1, (0.0..1.0).contains(&self.beta1))?;
        check("beta2", self.beta2, (0.0..1.0).contains(&self.beta2))?;
        check("eps", self.eps, self.eps > 0.0 && self.eps.is_finite())?;
        check("weight_decay", self.weight_decay, self.weight_decay >= 0.0 && self.weight_decay.is_finite())
    }

    /// The bias corrections 1 - beta^t of step t (1-based), computed in f64 on the host for both
    /// backends so they agree exactly.
    pub fn bias_corrections(&self, step: u64) -> (f64, f64) {
        let t = step.min(i32::MAX as u64) as i32;
        (1.0 - (self.beta1 as f64).powi(t), 1.0 - (self.beta2 as f64).powi(t))
    }
}

/// Checks a batch for the MLP: `x` is batch x input.
pub fn check_input(config: &MlpConfig, rows: usize, cols: usize) -> Result<()> {
    config.validate()?;
    if cols != config.input() {
        return Err(Error::shape("x", format!("{} columns (the MLP's input width)", config.input()), format!("{rows} x {cols}")));
    }
    if rows > i32::MAX as usize {
        return Err(Error::shape("x", "fewer than 2^31 rows", format!("{rows} rows")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_shapes_and_errors() {
        let c = MlpConfig::new(64, &[128, 96], 48, &[32, 16]).unwrap();
        assert_eq!(c.widths, vec![64, 128, 96, 48, 32, 16]);
        assert_eq!((c.layers(), c.feature_layer, c.feature(), c.output()), (5, 3, 48, 16));
        assert!(c.relu(4) && !c.relu(5));
        assert_eq!(c.parameter_count(), 64 * 128 + 128 + 128 * 96 + 96 + 96 * 48 + 48 + 48 * 32 + 32 + 32 * 16 + 16);
        assert!(matches!(MlpConfig::new(0, &[], 4, &[]), Err(Error::InvalidArgument { arg: "widths", .. })));
        let bad = MlpConfig { widths: vec![3, 4], feature_layer: 2 };
        assert!(matches!(bad.validate(), Err(Error::InvalidArgument { arg: "feature_layer", .. })));
        assert!(matches!(check_input(&c, 5, 63), Err(Error::Shape { arg: "x", .. })));
    }

    #[test]
    fn init_is_seeded_and_bounded() {
        let c = MlpConfig::new(24, &[16], 8, &[]).unwrap();
        let a = MlpParams::<f32>::init(&c, 3).unwrap();
        assert_eq!(a, MlpParams::<f32>::init(&c, 3).unwrap());
        assert_ne!(a, MlpParams::<f32>::init(&c, 4).unwrap());
        a.validate().unwrap();
        let bound = (6.0f32 / 24.0).sqrt();
        assert!(a.layers[0].weight.data().iter().all(|w| w.abs() <= bound));
        // Uniform on [-b, b] has variance b^2 / 3: the sample agrees within 10 %.
        let var = a.layers[0].weight.data().iter().map(|w| (w * w) as f64).sum::<f64>() / (16.0 * 24.0);
        assert!((var / (bound as f64 * bound as f64 / 3.0) - 1.0).abs() < 0.1, "variance {var}");
        assert!(a.layers.iter().all(|l| l.bias.iter().all(|&b| b == 0.0)));
        let mut broken = a.clone();
        broken.layers[1].bias.pop();
        assert!(matches!(broken.validate(), Err(Error::Shape { arg: "layers.bias", .. })));
    }

    #[test]
    fn adamw_validation() {
        AdamW::default().validate().unwrap();
        assert!(matches!(AdamW { beta1: 1.0, ..AdamW::default() }.validate(), Err(Error::InvalidArgument { arg: "beta1", .. })));
        assert!(matches!(AdamW { lr: f32::NAN, ..AdamW::default() }.validate(), Err(Error::InvalidArgument { arg: "lr", .. })));
        let (c1, c2) = AdamW::default().bias_corrections(1);
        // beta1 = 0.9f32 is 0.9 only to f32 precision.
        assert!((c1 - 0.1).abs() < 1e-6 && (c2 - 0.001).abs() < 1e-6, "{c1} {c2}");
    }
}
