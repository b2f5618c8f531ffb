//! Preprocessing on the CPU against its definition: an identity crop at the same size
//! only normalises, a mirrored frame mirrors, resizing averages as bilinear sampling
//! says, jitter is the affine map it claims, and crops read the right pixels.

#[macro_use]
mod common;

use common::assert_close;
use dfengine::data::preprocess::{
    FrameOp, IMAGENET_MEAN, IMAGENET_STD, Rect, preprocess, preprocess_yuv420, yuv_to_rgb, yuv420_len,
};

fn frame(h: usize, w: usize, f: impl Fn(usize, usize, usize) -> u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                out.push(f(y, x, c));
            }
        }
    }
    out
}

fn op(crop: Rect) -> FrameOp {
    FrameOp { crop, flip: false, brightness: 0.0, contrast: 1.0 }
}

#[test]
fn identity_crop_only_normalises_and_flip_mirrors() {
    let (h, w) = (5, 5);
    let src = frame(h, w, |y, x, c| (y * 40 + x * 7 + c * 3) as u8);
    let full = Rect { y0: 0, x0: 0, h, w };
    let out = preprocess(&src, h, w, &[op(full)], 5, IMAGENET_MEAN, IMAGENET_STD);
    let want: Vec<f32> = src
        .iter()
        .enumerate()
        .map(|(i, &v)| (v as f32 / 255.0 - IMAGENET_MEAN[i % 3]) / IMAGENET_STD[i % 3])
        .collect();
    assert_close("identity", &out, &want, 1e-6, 1e-6);

    let flipped =
        preprocess(&src, h, w, &[FrameOp { flip: true, ..op(full) }], 5, IMAGENET_MEAN, IMAGENET_STD);
    for y in 0..5 {
        for x in 0..5 {
            for c in 0..3 {
                assert_eq!(flipped[(y * 5 + x) * 3 + c], out[(y * 5 + 4 - x) * 3 + c], "({y},{x},{c})");
            }
        }
    }
}

#[test]
fn halving_averages_each_two_by_two_block() {
    let src = frame(4, 4, |y, x, _| (y * 4 + x) as u8 * 10);
    let out = preprocess(&src, 4, 4, &[op(Rect { y0: 0, x0: 0, h: 4, w: 4 })], 2, [0.0; 3], [1.0; 3]);
    // Output pixel centre (0.5 + i)·2 − 0.5 = 0.5 + 2i: halfway between two source pixels
    // in each direction, so each output is the mean of a 2×2 block.
    let block = |y: usize, x: usize| {
        (((y * 4 + x) + (y * 4 + x + 1) + ((y + 1) * 4 + x) + ((y + 1) * 4 + x + 1)) as f32 * 10.0 / 4.0)
            / 255.0
    };
    let want: Vec<f32> =
        [(0, 0), (0, 2), (2, 0), (2, 2)].iter().flat_map(|&(y, x)| [block(y, x); 3]).collect();
    assert_close("2x downscale", &out, &want, 1e-6, 1e-6);
}

#[test]
fn crops_read_their_own_rectangle_and_jitter_is_affine() {
    let src = frame(6, 8, |y, x, _| if (2..4).contains(&y) && (5..7).contains(&x) { 200 } else { 10 });
    let crop = Rect { y0: 2, x0: 5, h: 2, w: 2 };
    let out = preprocess(&src, 6, 8, &[op(crop)], 2, [0.0; 3], [1.0; 3]);
    assert!(out.iter().all(|&v| (v - 200.0 / 255.0).abs() < 1e-6), "{out:?}");

    let jittered = preprocess(
        &src,
        6,
        8,
        &[FrameOp { brightness: 0.1, contrast: 1.5, ..op(crop) }],
        2,
        [0.0; 3],
        [1.0; 3],
    );
    let want = (200.0 / 255.0 - 0.5) * 1.5 + 0.5 + 0.1;
    assert!(jittered.iter().all(|&v| (v - want).abs() < 1e-6), "{jittered:?} vs {want}");
}

#[test]
fn several_frames_keep_their_own_ops() {
    let a = frame(3, 3, |_, _, _| 0);
    let b = frame(3, 3, |_, _, _| 255);
    let src = [a, b].concat();
    let full = Rect { y0: 0, x0: 0, h: 3, w: 3 };
    let out = preprocess(&src, 3, 3, &[op(full), op(full)], 3, [0.0; 3], [1.0; 3]);
    assert!(out[..27].iter().all(|&v| v == 0.0) && out[27..].iter().all(|&v| v == 1.0));
}

/// RGB frames → I420 by BT.601 limited range (the inverse of `yuv_to_rgb`), chroma
/// averaged over each 2×2 block (the edge blocks of odd sizes over what they hold).
fn to_i420(rgb: &[u8], h: usize, w: usize) -> Vec<u8> {
    let px = |y: usize, x: usize| {
        let p = &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
        (p[0] as f32, p[1] as f32, p[2] as f32)
    };
    let mut out: Vec<u8> = (0..h * w)
        .map(|i| {
            let (r, g, b) = px(i / w, i % w);
            (16.0 + (65.738 * r + 129.057 * g + 25.064 * b) / 256.0).round() as u8
        })
        .collect();
    let (ch, cw) = (h.div_ceil(2), w.div_ceil(2));
    for plane in 0..2 {
        for cy in 0..ch {
            for cx in 0..cw {
                let block: Vec<(usize, usize)> = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .iter()
                    .map(|(dy, dx)| (2 * cy + dy, 2 * cx + dx))
                    .filter(|&(y, x)| y < h && x < w)
                    .collect();
                let mean = block
                    .iter()
                    .map(|&(y, x)| {
                        let (r, g, b) = px(y, x);
                        if plane == 0 {
                            -37.945 * r - 74.494 * g + 112.439 * b
                        } else {
                            112.439 * r - 94.154 * g - 18.285 * b
                        }
                    })
                    .sum::<f32>()
                    / block.len() as f32;
                out.push((128.0 + mean / 256.0).round() as u8);
            }
        }
    }
    assert_eq!(out.len(), yuv420_len(h, w));
    out
}

#[test]
fn yuv420_of_a_flat_colour_is_that_colour() {
    let (h, w, side) = (6, 10, 4);
    let mut src = vec![81u8; h * w];
    src.extend(vec![90u8; 3 * 5]);
    src.extend(vec![240u8; 3 * 5]);
    let got =
        preprocess_yuv420(&src, h, w, &[op(Rect { y0: 1, x0: 2, h: 4, w: 7 })], side, [0.0; 3], [1.0; 3]);
    let rgb = yuv_to_rgb(81.0, 90.0, 240.0);
    // BT.601 limited range: (81, 90, 240) is pure red, as FFmpeg converts it.
    assert!(rgb[0] > 250.0 && rgb[1] < 5.0 && rgb[2] < 5.0, "{rgb:?}");
    let want: Vec<f32> = (0..side * side).flat_map(|_| rgb.map(|c| c / 255.0)).collect();
    assert_close("flat I420 frame", &got, &want, 1e-6, 0.0);
}

#[test]
fn yuv420_input_matches_the_rgb_path_on_the_same_picture() {
    // A smooth picture with odd sizes, through I420 and through RGB: the same up to the
    // 8-bit rounding of the YUV values and the chroma subsampling.
    let (h, w, side) = (41, 57, 24);
    let rgb = frame(h, w, |y, x, c| {
        let v = match c {
            0 => 60.0 + 120.0 * (x as f32 / w as f32),
            1 => 200.0 - 100.0 * (y as f32 / h as f32),
            _ => 90.0 + 50.0 * ((x + y) as f32 / (w + h) as f32),
        };
        v as u8
    });
    let ops =
        [FrameOp { crop: Rect { y0: 3, x0: 5, h: 33, w: 41 }, flip: true, brightness: 0.05, contrast: 1.1 }];
    let want = preprocess(&rgb, h, w, &ops, side, IMAGENET_MEAN, IMAGENET_STD);
    let got = preprocess_yuv420(&to_i420(&rgb, h, w), h, w, &ops, side, IMAGENET_MEAN, IMAGENET_STD);
    // Two 8-bit roundings (RGB → YUV here, none back) of at most ~1.5 levels each, over
    // the smallest std (0.224) and scaled by contrast 1.1: ≈ 0.06 (0.024 seen).
    assert_close("I420 vs RGB", &got, &want, 0.06, 0.0);
}

/// The preprocessing kernel for `format` on frames `src` (`h × w`) with `ops`, through its
/// host function; the output as f32. `None` without a GPU (the reason printed).
#[cfg(feature = "cuda")]
fn run_preprocess_kernel(
    format: dfengine::backend::cuda::preprocess::FrameFormat,
    src: &[u8],
    h: usize,
    w: usize,
    ops: &[FrameOp],
    side: usize,
) -> Option<Vec<f32>> {
    use dfengine::backend::cuda::preprocess::preprocess_frames;
    use dfengine::backend::params::Normalize;
    use dfengine::data::preprocess::frame_params;
    use half::f16;

    let dev = common::gpu_device()?;
    let d_src = dev.upload(src).unwrap();
    let mut d_out = dev.alloc::<f16>(ops.len() * side * side * 3).unwrap();
    let norm = Normalize { mean: IMAGENET_MEAN, std: IMAGENET_STD };
    preprocess_frames(&dev, format, &d_src, (h, w), &frame_params(ops), side, norm, &mut d_out).unwrap();
    Some(dev.download(&d_out).unwrap().into_iter().map(f16::to_f32).collect())
}

/// Odd sizes, crops, flips and jitter for the kernel parity tests.
#[cfg(feature = "cuda")]
fn parity_ops() -> [FrameOp; 3] {
    [
        FrameOp { crop: Rect { y0: 0, x0: 0, h: 37, w: 53 }, flip: false, brightness: 0.0, contrast: 1.0 },
        FrameOp { crop: Rect { y0: 5, x0: 11, h: 29, w: 29 }, flip: true, brightness: 0.05, contrast: 1.2 },
        FrameOp { crop: Rect { y0: 20, x0: 40, h: 17, w: 13 }, flip: false, brightness: -0.1, contrast: 0.8 },
    ]
}

/// The kernel `preprocess_u8_f16` against the CPU twin: equal to f16 rounding. Skips
/// with the reason without a GPU.
#[cfg(feature = "cuda")]
#[test]
fn preprocess_u8_f16_matches_cpu_cuda() {
    use dfengine::backend::cuda::preprocess::FrameFormat;
    let (n, h, w, side) = (3usize, 37usize, 53usize, 24usize);
    let src = frame(n * h, w, |y, x, c| ((y * 31 + x * 17 + c * 59) % 251) as u8);
    let ops = parity_ops();
    let want = preprocess(&src, h, w, &ops, side, IMAGENET_MEAN, IMAGENET_STD);
    let Some(got) = run_preprocess_kernel(FrameFormat::Rgb, &src, h, w, &ops, side) else { return };
    // f16 keeps 11 significant bits: normalised values up to ~2.7 round by ≤ 2⁻⁹·2.7.
    assert_close("preprocess_u8_f16 vs CPU", &got, &want, 2e-3, 1e-3);
}

/// The kernel `preprocess_yuv420_f16` against the CPU twin on I420 frames of odd size.
#[cfg(feature = "cuda")]
#[test]
fn preprocess_yuv420_f16_matches_cpu_cuda() {
    use dfengine::backend::cuda::preprocess::FrameFormat;
    let (h, w, side) = (37usize, 53usize, 24usize);
    let ops = parity_ops();
    let src: Vec<u8> = (0..ops.len() * yuv420_len(h, w)).map(|i| ((i * 37 + i / 7) % 251) as u8).collect();
    let want = preprocess_yuv420(&src, h, w, &ops, side, IMAGENET_MEAN, IMAGENET_STD);
    let Some(got) = run_preprocess_kernel(FrameFormat::I420, &src, h, w, &ops, side) else { return };
    assert_close("preprocess_yuv420_f16 vs CPU", &got, &want, 2e-3, 1e-3);
}

/// The quick demo's first training batch, as the loader stores it (u8 frames and each
/// clip's crop, flip and jitter).
fn stored_demo_batch() -> (dfengine::config::Config, dfengine::data::loader::Batch) {
    use dfengine::data::loader::{EpochLoader, LoaderControl, Workers};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quick_demo.toml");
    let mut c = dfengine::config::load(Some(&path), &[]).unwrap().config;
    c.data.synthetic_videos = 40;
    c.train.mixed_precision = true;
    let splits = dfengine::data::splits::splits(&c).unwrap();
    let s = dfengine::train::run::loader_settings(&c, true);
    let control = LoaderControl::new(false);
    let mut loader = EpochLoader::start_on(Workers::new(1), splits.train.clone(), s, 0, 0, control);
    (c, loader.next().unwrap().unwrap())
}

/// `[gpu] preprocess = "gpu"` and `"cpu"` give the same batches: the model's FP16 input
/// made on the device from the u8 frames agrees with the CPU twin's within the kernels'
/// parity tolerance, only the u8 frames cross to the device, and three training steps
/// from the same weights follow the same losses.
fn device_and_host_preprocessing_train_alike<B: dfengine::backend::ops::Backend>(
    b: &B,
    _: &common::DeviceUnderTest,
) {
    use dfengine::data::loader::Pixels;
    use dfengine::memory::governor::BatchPlan;
    use dfengine::model::arch::ResNetSpec;
    use dfengine::model::resnet::ResNet;
    use dfengine::tensor::DType;
    use dfengine::train::optimizer::Optimizer;
    use dfengine::train::scaler::LossScaler;
    use dfengine::train::step::{PreprocessOn, StepSettings, batch_input, train_step};

    let (c, batch) = stored_demo_batch();
    let Pixels::Stored(stored) = &batch.pixels else { panic!("the loader was told to store") };
    let n = batch.clips.len();
    let (on_device, device_bytes) = batch_input(b, &batch, 0..n, DType::F16, PreprocessOn::Device).unwrap();
    let (on_host, host_bytes) = batch_input(b, &batch, 0..n, DType::F16, PreprocessOn::Host).unwrap();
    assert_eq!(device_bytes, stored.data.len(), "the u8 frames, {n} clips × 4 frames × 40² × 3");
    assert_eq!(host_bytes, n * 4 * 32 * 32 * 3 * 2, "the FP16 input");
    assert_eq!(on_device.dtype(), DType::F16);
    assert_close(
        "input, device vs host",
        &b.to_vec(&on_device).unwrap(),
        &b.to_vec(&on_host).unwrap(),
        2e-3,
        1e-3,
    );

    let t = &c.train;
    let losses = |on: PreprocessOn| {
        let mut net =
            ResNet::new(b, ResNetSpec::of(c.model.backbone), batch.frames_per_clip, t.seed).unwrap();
        net.activations = DType::F16;
        let mut opt = Optimizer::new(b, t.optimizer, t.weight_decay as f32, &net.trainable_mut()).unwrap();
        let mut scaler = LossScaler::of(t);
        let plan = BatchPlan { micro_batch: 4, accumulation: 2 };
        let s = StepSettings { preprocess: on, ..StepSettings::of(t, t.lr) };
        (0..3)
            .map(|_| train_step(b, &mut net, &mut opt, &mut scaler, &batch, plan, &s, |_| None).unwrap().loss)
            .collect::<Vec<f64>>()
    };
    let (device, host) = (losses(PreprocessOn::Device), losses(PreprocessOn::Host));
    for (step, (d, h)) in device.iter().zip(&host).enumerate() {
        // FP16 rounding of one input in a thousand moves the loss by far less than this.
        assert!((d - h).abs() < 2e-3 * (1.0 + h.abs()), "step {}: device {d} vs host {h}", step + 1);
    }
}

test_device!(
    device_and_host_preprocessing_train_alike,
    device_and_host_preprocessing_train_alike_cpu,
    device_and_host_preprocessing_train_alike_cuda
);
