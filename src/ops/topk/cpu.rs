//! Oracle of `topk`: every cosine similarity of a query against the bank in f64, then a full sort.
//!
//! Order (the kernels' order too): larger similarity first; equal similarities by the smaller bank
//! index; NaN similarities (a NaN in the query or in a bank row) rank below every number, among
//! themselves by index. So a bank row holding a NaN is never a neighbour unless k exceeds the
//! number of finite rows, and a query holding a NaN gets NaN similarities to bank rows 0, 1, ...
//! With an exclusion, the excluded bank row is not a candidate at all.

use super::{check, Exclusion, TopK, TopKOptions};
use crate::dtype::Float;
use crate::error::Result;
use crate::matrix::Matrix;
use crate::ops::normalize::{cpu::row_norms, norm_denominator};

/// The result order on f64 similarities: `Less` when (a, ia) comes first.
pub fn result_order(a: f64, ia: usize, b: f64, ib: usize) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => ia.cmp(&ib),
        (true, false) => Greater,
        (false, true) => Less,
        (false, false) => b.partial_cmp(&a).unwrap_or(Equal).then(ia.cmp(&ib)),
    }
}

/// The kernels' 64-bit key of (similarity, index): its unsigned order is the result order
/// (larger first), see kernels/common/select.cuh. Key 0 is the "empty" sentinel.
#[cfg(test)]
pub(crate) fn select_key(value: f32, index: i32) -> u64 {
    ((order_bits(value) as u64) << 32) | (!(index as u32)) as u64
}

/// The order-preserving bit pattern of a float: NaN -> 0, -0 -> +0.
#[cfg(test)]
pub(crate) fn order_bits(v: f32) -> u32 {
    if v.is_nan() {
        return 0;
    }
    let mut b = v.to_bits();
    if b << 1 == 0 {
        b = 0;
    }
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The (similarity, index) of a key; the sentinel 0 decodes to (NaN, -1).
#[cfg(test)]
pub(crate) fn decode_key(key: u64) -> (f32, i32) {
    let o = (key >> 32) as u32;
    let value = if o == 0 {
        f32::NAN
    } else if o & 0x8000_0000 != 0 {
        f32::from_bits(o & 0x7fff_ffff)
    } else {
        f32::from_bits(!o)
    };
    (value, !(key as u32) as i32)
}

/// The bank index query `row` must skip, if any.
pub fn excluded_index(exclude: &Exclusion, row: usize) -> Option<usize> {
    match exclude {
        Exclusion::None => None,
        Exclusion::Diagonal { offset } => Some(row + offset),
        Exclusion::Indices(v) => usize::try_from(v[row]).ok(),
    }
}

/// The cosine similarities the kernels compute, in f64: <q, b> / (max(|q|, eps) max(|b|, eps)),
/// or the raw <q, b> when `normalized`.
pub fn similarities<T: Float>(queries: &Matrix<T>, bank: &Matrix<T>, normalized: bool) -> Matrix<f64> {
    let (nq, nb) = (row_norms(queries), row_norms(bank));
    Matrix::from_fn(queries.rows(), bank.rows(), |i, j| {
        let dot: f64 = queries.row(i).iter().zip(bank.row(j)).map(|(x, y)| x.to_f64() * y.to_f64()).sum();
        if normalized {
            dot
        } else {
            dot / (norm_denominator(nq[i]) * norm_denominator(nb[j]))
        }
    })
}

/// The exact top k of each query, by a full sort of its row of similarities.
pub fn topk<T: Float>(queries: &Matrix<T>, bank: &Matrix<T>, opts: &TopKOptions) -> Result<TopK<f64>> {
    check((queries.rows(), queries.cols()), (bank.rows(), bank.cols()), opts)?;
    Ok(topk_of_similarities(&similarities(queries, bank, opts.normalized), opts.k, &opts.exclude))
}

/// The top k of each row of an already computed similarity matrix (k <= its usable columns).
pub fn topk_of_similarities(s: &Matrix<f64>, k: usize, exclude: &Exclusion) -> TopK<f64> {
    let mut values = Vec::with_capacity(s.rows() * k);
    let mut indices = Vec::with_capacity(s.rows() * k);
    for i in 0..s.rows() {
        let row = s.row(i);
        let skip = excluded_index(exclude, i);
        let mut order: Vec<usize> = (0..row.len()).filter(|&j| Some(j) != skip).collect();
        order.sort_by(|&a, &b| result_order(row[a], a, row[b], b));
        for &j in &order[..k] {
            values.push(row[j]);
            indices.push(j as i32);
        }
    }
    TopK { rows: s.rows(), k, values, indices }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_like_the_oracle() {
        let vals = [
            f32::NAN,
            f32::NEG_INFINITY,
            -1.0,
            -0.5,
            -0.0,
            0.0,
            1e-30,
            0.25,
            0.5,
            1.0,
            f32::INFINITY,
            -f32::NAN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            -f32::from_bits(1),
        ];
        let mut pairs = Vec::new();
        for &va in &vals {
            for idx in [0i32, 1, 7, 1000, i32::MAX] {
                pairs.push((va, idx));
            }
        }
        for &(a, ia) in &pairs {
            let ka = select_key(a, ia);
            assert!(ka > 0, "real keys are above the sentinel");
            let (dv, di) = decode_key(ka);
            assert_eq!(di, ia);
            assert!(dv.to_bits() == if a == 0.0 { 0 } else { a.to_bits() } || (a.is_nan() && dv.is_nan()));
            for &(b, ib) in &pairs {
                let want = result_order(a as f64, ia as usize, b as f64, ib as usize);
                let got = select_key(b, ib).cmp(&ka); // the larger key comes first
                assert_eq!(got, want, "({a}, {ia}) vs ({b}, {ib})");
            }
        }
        assert_eq!(decode_key(0).1, -1);
    }

    #[test]
    fn oracle_order_ties_and_nan() {
        let s = Matrix::new(2, 5, vec![0.5, f64::NAN, 0.5, 0.9, -0.0, f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN]).unwrap();
        let t = topk_of_similarities(&s, 5, &Exclusion::None);
        assert_eq!(t.row_indices(0), &[3, 0, 2, 4, 1]);
        assert_eq!(t.row_indices(1), &[0, 1, 2, 3, 4]);
        let t = topk_of_similarities(&s, 2, &Exclusion::Diagonal { offset: 3 });
        assert_eq!(t.row_indices(0), &[0, 2], "bank row 3 is query 0's own row");
        assert_eq!(t.row_indices(1), &[0, 1], "query 1 skips bank row 4");
        let t = topk_of_similarities(&s, 1, &Exclusion::Indices(vec![-1, 0]));
        assert_eq!(t.indices, vec![3, 1]);
    }
}
