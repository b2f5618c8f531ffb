//! The face detector's activations (kernels/activation.cu, src/backend/cpu/activation.rs):
//! the per-channel bias alone and fused with PReLU, and softmax over the last dimension,
//! against their definitions on every backend and, on a GPU, against the CPU twins: bit
//! for bit for the bias ops, within the fast exp's few ulp for softmax. Sizes with an odd
//! channel count, past one CPU task of rows, and (on a card) past one grid of the
//! grid-stride loop.

#[macro_use]
mod common;

use common::{DeviceUnderTest, Rng, assert_close, host, tensor};
use dfengine::backend::cpu::activation;
use dfengine::backend::ops::Backend;
use dfengine::tensor::{DType, Shape};

/// Rows of `c` channels: 5000 rows pass one CPU task (4096 rows); on a card 1.2 M
/// elements pass one grid of the grid-stride loop (4096 blocks of 256 threads).
fn sizes(dut: &DeviceUnderTest) -> Vec<(usize, usize)> {
    let mut s = vec![(1, 1), (5000, 7), (333, 32)];
    if !dut.software_gpu {
        s.push((120_001, 10));
    }
    s
}

fn bias_add_and_bias_prelu_match_their_definition<B: Backend>(b: &B, dut: &DeviceUnderTest) {
    let mut rng = Rng::new(1);
    for (rows, c) in sizes(dut) {
        let x = rng.vec(rows * c, -2.0, 2.0);
        let bias = rng.vec(c, -1.0, 1.0);
        let alpha = rng.vec(c, -0.5, 0.5);
        let (tb, ta) = (tensor(b, [c], &bias), tensor(b, [c], &alpha));
        let mut y = tensor(b, [rows, c], &x);
        b.bias_prelu(&mut y, &tb, &ta).unwrap();
        let mut z = tensor(b, [rows, c], &x);
        b.bias_add(&mut z, &tb).unwrap();
        let (mut want_prelu, mut want_add) = (Vec::new(), Vec::new());
        for (i, &xi) in x.iter().enumerate() {
            let v = xi + bias[i % c];
            want_prelu.push(if v >= 0.0 { v } else { alpha[i % c] * v });
            want_add.push(v);
        }
        assert_close(&format!("bias_prelu {rows}×{c}"), &host(b, &y), &want_prelu, 0.0, 0.0);
        assert_close(&format!("bias_add {rows}×{c}"), &host(b, &z), &want_add, 0.0, 0.0);
        // The CPU twins, on the host: what the kernels must match bit for bit.
        let mut twin = x.clone();
        activation::bias_prelu(&mut twin, &bias, &alpha);
        assert_eq!(bits(&host(b, &y)), bits(&twin), "bias_prelu {rows}×{c} against the CPU twin");
        let mut twin = x.clone();
        activation::bias_add(&mut twin, &bias);
        assert_eq!(bits(&host(b, &z)), bits(&twin), "bias_add {rows}×{c} against the CPU twin");
    }
}
test_device!(
    bias_add_and_bias_prelu_match_their_definition,
    bias_add_and_bias_prelu_match_their_definition_cpu,
    bias_add_and_bias_prelu_match_their_definition_cuda
);

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn bias_ops_refuse_wrong_vectors_dtypes_and_shared_outputs<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut y = tensor(b, [4, 3], &[0.0; 12]);
    let (three, two) = (tensor(b, [3], &[1.0; 3]), tensor(b, [2], &[1.0; 2]));
    let err = b.bias_prelu(&mut y, &three, &two).expect_err("two slopes for three channels").to_string();
    assert!(err.contains("bias_prelu") && err.contains("alpha"), "{err}");
    let err = b.bias_add(&mut y, &two).expect_err("two biases for three channels").to_string();
    assert!(err.contains("bias_add") && err.contains("bias"), "{err}");
    let mut half = b.tensor_as(Shape::from([4, 3]), &[0.0; 12], DType::F16).unwrap();
    assert!(b.bias_add(&mut half, &three).is_err(), "an FP16 map is refused");
    let mut shared = y.clone();
    let err = b.bias_prelu(&mut shared, &three, &three).expect_err("a shared map").to_string();
    assert!(err.contains("shared"), "{err}");
    let err = b.softmax_rows(&half).err().expect("an FP16 input").to_string();
    assert!(err.contains("softmax_rows"), "{err}");
}
test_device!(
    bias_ops_refuse_wrong_vectors_dtypes_and_shared_outputs,
    bias_ops_refuse_wrong_vectors_dtypes_and_shared_outputs_cpu,
    bias_ops_refuse_wrong_vectors_dtypes_and_shared_outputs_cuda
);

fn softmax_rows_matches_its_definition_and_survives_large_logits<B: Backend>(b: &B, dut: &DeviceUnderTest) {
    // The fast exp's error grows with |x − max| (2 + 1.16·|x| ulp): up to 14 ulp here.
    let rtol = if dut.fast_exp { 2e-6 } else { 0.0 };
    let mut rng = Rng::new(2);
    let mut cases = vec![(9000, 3), (4099, 2), (7, 1)];
    if !dut.software_gpu {
        cases.push((1_100_003, 2));
    }
    for (rows, c) in cases {
        let mut x = rng.vec(rows * c, -5.0, 5.0);
        x[0] = 1000.0; // exp would overflow without the maximum subtracted
        let y = host(b, &b.softmax_rows(&tensor(b, [rows, c], &x)).unwrap());
        let mut want = Vec::with_capacity(x.len());
        for xr in x.chunks(c) {
            let m = xr.iter().copied().fold(f64::NEG_INFINITY, |a, v| a.max(v as f64));
            let sum: f64 = xr.iter().map(|&v| (v as f64 - m).exp()).sum();
            want.extend(xr.iter().map(|&v| ((v as f64 - m).exp() / sum) as f32));
        }
        assert_close(&format!("softmax_rows {rows}×{c}"), &y, &want, 1e-6, rtol);
        let mut twin = vec![0.0; x.len()];
        activation::softmax_rows(&x, c, &mut twin);
        assert_close(&format!("softmax_rows {rows}×{c} against the CPU twin"), &y, &twin, 1e-7, rtol);
    }
}
test_device!(
    softmax_rows_matches_its_definition_and_survives_large_logits,
    softmax_rows_matches_its_definition_and_survives_large_logits_cpu,
    softmax_rows_matches_its_definition_and_survives_large_logits_cuda
);
