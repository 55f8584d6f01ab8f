//! `topk`: for queries Q (nq x d) and a bank B (nb x d), the k largest cosine similarities of
//! each query and their bank indices, sorted, ties to the smaller index, NaN similarities last
//! (the order of [`cpu`], the oracle). Kernels: `kernels/topk.cu` (its header explains
//! the selection); the nq x nb similarity matrix is never written.
//!
//! * k <= 1024: one fused sweep (tile core + threshold filter + per-query pools), then a merge.
//! * k > 1024 (up to the bank's rows): multi-pass radix select over recomputed tiles, about 3 - 5
//!   GEMM-equivalents, with one small device-to-host read per pass (the stream is synchronized).
//! * Banks on the device ([`gpu::topk`], [`gpu::topk_raw`]) or in host memory, streamed in chunks through
//!   pinned buffers on a second stream while the previous chunk computes ([`gpu::topk_host_bank`]);
//!   per-chunk results are merged exactly, so the result is bit for bit the unchunked one.
//! * f16 / bf16: tensor cores; f32: exact FFMA. Any d; `normalized` skips the norm prologue.
//! * [`gpu::topk_unfused`]: the baseline (cuBLAS GEMM writing similarity blocks, then a plain top-k).

pub mod cpu;
pub mod gpu;
mod select_model;

use super::check_features;
use crate::error::{Error, Result};

/// The k nearest bank rows of each query: `values[i * k + j]` is the j-th largest similarity of
/// query i and `indices[i * k + j]` its bank row, in the order of [`cpu`]'s docs.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK<V> {
    pub rows: usize,
    pub k: usize,
    pub values: Vec<V>,
    pub indices: Vec<i32>,
}

impl<V: Copy> TopK<V> {
    pub fn row_values(&self, i: usize) -> &[V] {
        &self.values[i * self.k..(i + 1) * self.k]
    }
    pub fn row_indices(&self, i: usize) -> &[i32] {
        &self.indices[i * self.k..(i + 1) * self.k]
    }
}

/// Bank rows a query must not return (leave-one-out scoring of the bank's own rows).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Exclusion {
    #[default]
    None,
    /// Query i is bank row `i + offset`, which it skips.
    Diagonal { offset: usize },
    /// Query i skips bank row `v[i]` (-1: nothing), one entry per query.
    Indices(Vec<i32>),
}

/// Parameters of [`gpu::topk`] and [`cpu::topk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopKOptions {
    /// Neighbours per query, 1 ..= the bank's usable rows.
    pub k: usize,
    /// The rows are already unit vectors: use raw dot products (no norm prologue).
    pub normalized: bool,
    pub exclude: Exclusion,
}

impl TopKOptions {
    pub fn new(k: usize) -> Self {
        TopKOptions { k, normalized: false, exclude: Exclusion::None }
    }
    pub fn normalized(mut self, yes: bool) -> Self {
        self.normalized = yes;
        self
    }
    /// Query i is bank row i (the queries are the bank): skip it.
    pub fn exclude_self(mut self) -> Self {
        self.exclude = Exclusion::Diagonal { offset: 0 };
        self
    }
    pub fn exclude(mut self, exclude: Exclusion) -> Self {
        self.exclude = exclude;
        self
    }
}

/// Validation shared by every backend.
pub fn check(queries: (usize, usize), bank: (usize, usize), opts: &TopKOptions) -> Result<()> {
    check_features("queries", queries.0, queries.1)?;
    check_features("bank", bank.0, bank.1)?;
    if bank.1 != queries.1 {
        return Err(Error::shape("bank", format!("{} columns (the d of queries)", queries.1), format!("{} x {}", bank.0, bank.1)));
    }
    let (nq, nb) = (queries.0, bank.0);
    match &opts.exclude {
        Exclusion::None => {}
        Exclusion::Diagonal { offset } => {
            if nq > 0 && offset + nq > nb {
                return Err(Error::invalid(
                    "exclude",
                    format!("query i is bank row i + {offset}, so the bank needs {} rows, it has {nb}", offset + nq),
                ));
            }
        }
        Exclusion::Indices(v) => {
            if v.len() != nq {
                return Err(Error::shape("exclude", format!("{nq} indices (one per query)"), format!("{}", v.len())));
            }
            if let Some((i, &e)) = v.iter().enumerate().find(|(_, &e)| e < -1 || e as i64 >= nb as i64) {
                return Err(Error::invalid("exclude", format!("entry {i} is {e}, expected -1 or a bank row in 0..{nb}")));
            }
        }
    }
    let excluding = opts.exclude != Exclusion::None;
    let usable = nb - excluding as usize;
    if opts.k == 0 {
        return Err(Error::invalid("k", "must be at least 1"));
    }
    if opts.k > usable {
        let why = if excluding { format!("the bank's {nb} rows minus the excluded one") } else { format!("the bank's {nb} rows") };
        return Err(Error::invalid("k", format!("must be at most {usable} ({why}), got {}", opts.k)));
    }
    Ok(())
}
