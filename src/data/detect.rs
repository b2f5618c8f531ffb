//! Face detection with MTCNN (`model::mtcnn`), following facenet-pytorch 2.6.0's
//! `detect_face` step by step, so that its thresholds and results carry over:
//!
//! 1. Pyramid: scales 12/min_face · factor^k while the shorter side stays ≥ 12 px; each
//!    level is the image area-resized (PyTorch's `interpolate(mode="area")`) to
//!    (⌊h·s + 1⌋, ⌊w·s + 1⌋) and scaled to (x − 127.5)/128. P-Net's cells with face
//!    probability ≥ t0 become boxes ⌊(2·cell + 1)/s⌋ .. ⌊(2·cell + 12)/s⌋; NMS at IoU 0.5
//!    within each level, then 0.7 over all levels; P-Net's regression (scaled by
//!    x2 − x1); boxes made square.
//! 2. R-Net on each box's crop (1-based, truncated, clipped to the image, not padded),
//!    area-resized to 24²: probability > t1 keeps it, NMS 0.7, regression (scaled by
//!    x2 − x1 + 1), square.
//! 3. O-Net on 48² crops: probability > t2, five landmarks placed in the box it saw,
//!    regression, then NMS at 0.7 overlap over the smaller box ("Min").
//!
//! IoU NMS is torchvision's (areas without +1, a box goes when its IoU is above the
//! threshold); "Min" has facenet-pytorch's +1. Where facenet-pytorch leaves things loose,
//! sorts are stable (equal scores keep the earlier box) and a box whose clipped crop is
//! empty is dropped rather than misaligning the boxes after it. Arithmetic is f32, as
//! theirs. Faces come out by descending score.

use std::path::Path;

use rayon::prelude::*;

use super::faces::FaceBox;
use crate::backend::cpu::CpuBackend;
use crate::backend::ops::Backend;
use crate::model::mtcnn::{Cascade, Mtcnn, MtcnnError, NetOutput, Stage};

/// The detector's knobs, with facenet-pytorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectSettings {
    /// Smallest face searched for, in pixels of the image given to `detect`.
    pub min_face: f64,
    /// Ratio between pyramid levels.
    pub factor: f64,
    /// Face probability needed at P-, R- and O-Net.
    pub thresholds: [f32; 3],
}

impl Default for DetectSettings {
    fn default() -> Self {
        DetectSettings { min_face: 20.0, factor: 0.709, thresholds: [0.6, 0.7, 0.7] }
    }
}

impl DetectSettings {
    /// The thresholds of the DFDC-winning solution (fewer, surer faces).
    pub const DFDC_THRESHOLDS: [f32; 3] = [0.85, 0.95, 0.95];

    /// What is wrong with these settings, if anything.
    pub fn problem(&self) -> Option<String> {
        if !(self.min_face.is_finite() && self.min_face >= 1.0) {
            return Some(format!("min_face {} must be ≥ 1 pixel", self.min_face));
        }
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Some(format!("pyramid factor {} must lie strictly between 0 and 1", self.factor));
        }
        if let Some(t) = self.thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Some(format!("threshold {t} must lie in [0, 1]"));
        }
        None
    }
}

/// A detected face: its box (x1, y1, x2, y2 in pixels), O-Net's probability, and five
/// landmarks (x, y): left eye, right eye, nose, left and right mouth corners.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Face {
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    /// The box as (left, top, width, height), the sidecars' form.
    pub fn to_box(&self) -> FaceBox {
        let [x1, y1, x2, y2] = self.bbox.map(f64::from);
        FaceBox { x: x1, y: y1, w: x2 - x1, h: y2 - y1 }
    }
}

/// An RGB24 image: `height` rows of `width × 3` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    pub rgb: &'a [u8],
    pub width: usize,
    pub height: usize,
}

/// MTCNN with its settings, ready to run on images, on the backend it was loaded on.
pub struct FaceDetector {
    nets: Box<dyn Cascade>,
    settings: DetectSettings,
}

/// A box on its way through the cascade: corners, score, the last network's regression.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

impl FaceDetector {
    /// Loads the weights (`model::mtcnn::DEFAULT_WEIGHTS` from the fetch script) for the
    /// CPU backend.
    pub fn load(weights: &Path, settings: DetectSettings) -> Result<Self, MtcnnError> {
        Self::load_on(CpuBackend::default(), weights, settings)
    }

    /// Loads the weights onto `backend` (the CUDA backend when `prepare` has a GPU); the
    /// networks run there, the rest of the cascade (pyramid, crops, NMS) on the host.
    pub fn load_on<B: Backend + Send + 'static>(
        backend: B,
        weights: &Path,
        settings: DetectSettings,
    ) -> Result<Self, MtcnnError> {
        Ok(FaceDetector { nets: Box::new(Mtcnn::load(backend, weights)?), settings })
    }

    pub fn settings(&self) -> &DetectSettings {
        &self.settings
    }

    /// The backend the networks run on, e.g. "cpu (2 threads)" or "cuda:0 NVIDIA H200".
    pub fn backend_name(&self) -> String {
        self.nets.backend_name()
    }

    /// `stage` on `x` [N, H, W, 3]; an error names the backend.
    fn run(&self, stage: Stage, x: &[f32], dims: [usize; 4]) -> Result<NetOutput, String> {
        self.nets
            .forward(stage, x, dims)
            .map_err(|e| format!("face detector on {}: {e}", self.nets.backend_name()))
    }

    /// The faces in `img`, most confident first; none (not an error) in an image with no
    /// face or one too small to search.
    pub fn detect(&self, img: Image) -> Result<Vec<Face>, String> {
        if img.rgb.len() != img.width * img.height * 3 {
            return Err(format!(
                "image of {}×{} needs {} RGB bytes, got {}",
                img.width,
                img.height,
                img.width * img.height * 3,
                img.rgb.len()
            ));
        }
        if let Some(problem) = self.settings.problem() {
            return Err(format!("face detector settings: {problem}"));
        }
        let t = self.settings.thresholds;
        let sums = Sums::of(img);
        let boxes = self.proposals(&sums)?;
        let boxes = self.refine(&sums, boxes, t[1])?;
        let mut boxes: Vec<Candidate> =
            nms_order(&boxes, 0.7, Overlap::Union).into_iter().map(|i| boxes[i]).collect();
        boxes.iter_mut().for_each(|c| c.b = square(regress(c.b, c.reg)));
        self.finish(&sums, boxes)
    }

    /// Stage 1: P-Net over the pyramid, NMS per level and across levels, regressed and
    /// squared.
    fn proposals(&self, sums: &Sums) -> Result<Vec<Candidate>, String> {
        let s = &self.settings;
        let m = 12.0 / s.min_face;
        let mut shorter = sums.width.min(sums.height) as f64 * m;
        let mut scales = Vec::new();
        let mut scale = m;
        while shorter >= 12.0 {
            scales.push(scale);
            scale *= s.factor;
            shorter *= s.factor;
        }
        let per_level: Vec<Vec<Candidate>> =
            scales.par_iter().map(|&scale| self.level(sums, scale)).collect::<Result<_, _>>()?;
        let all: Vec<Candidate> = per_level.into_iter().flatten().collect();
        Ok(nms_order(&all, 0.7, Overlap::Union)
            .into_iter()
            .map(|i| {
                let c = all[i];
                let [x1, y1, x2, y2] = c.b;
                let (w, h) = (x2 - x1, y2 - y1);
                let r = c.reg;
                let b = [x1 + r[0] * w, y1 + r[1] * h, x2 + r[2] * w, y2 + r[3] * h];
                Candidate { b: square(b), ..c }
            })
            .collect())
    }

    /// P-Net's boxes at one pyramid level, after NMS within the level.
    fn level(&self, sums: &Sums, scale: f64) -> Result<Vec<Candidate>, String> {
        let hs = (sums.height as f64 * scale + 1.0) as usize;
        let ws = (sums.width as f64 * scale + 1.0) as usize;
        let side = Stage::PNet.side();
        if hs < side || ws < side {
            return Ok(Vec::new());
        }
        let mut x = vec![0.0; hs * ws * 3];
        sums.area_resize([0, 0, sums.width, sums.height], hs, ws, &mut x);
        let out = self.run(Stage::PNet, &x, [1, hs, ws, 3])?;
        let [_, q] = out.map;
        let sc = scale as f32;
        let found: Vec<Candidate> = (0..out.rows)
            .filter(|&i| out.prob[i] >= self.settings.thresholds[0])
            .map(|i| {
                let (cy, cx) = ((i / q) as f32, (i % q) as f32);
                let e = &out.extra_data[i * out.extra..i * out.extra + 4];
                Candidate {
                    b: [
                        ((2.0 * cx + 1.0) / sc).floor(),
                        ((2.0 * cy + 1.0) / sc).floor(),
                        ((2.0 * cx + 12.0) / sc).floor(),
                        ((2.0 * cy + 12.0) / sc).floor(),
                    ],
                    score: out.prob[i],
                    reg: [e[0], e[1], e[2], e[3]],
                }
            })
            .collect();
        Ok(nms_order(&found, 0.5, Overlap::Union).into_iter().map(|i| found[i]).collect())
    }

    /// Stage 3: O-Net, landmarks, regression, "Min" NMS.
    fn finish(&self, sums: &Sums, boxes: Vec<Candidate>) -> Result<Vec<Face>, String> {
        let Some((kept, out)) = self.run_on_crops(sums, Stage::ONet, &boxes)? else { return Ok(Vec::new()) };
        let mut faces: Vec<(Face, [f32; 4])> = Vec::new();
        for (row, &k) in kept.iter().enumerate() {
            let score = out.prob[row];
            if score <= self.settings.thresholds[2] {
                continue;
            }
            let e = &out.extra_data[row * out.extra..(row + 1) * out.extra];
            let [x1, y1, x2, y2] = boxes[k].b;
            let (w, h) = (x2 - x1 + 1.0, y2 - y1 + 1.0);
            let landmarks = std::array::from_fn(|j| [w * e[4 + j] + x1 - 1.0, h * e[9 + j] + y1 - 1.0]);
            let reg = [e[0], e[1], e[2], e[3]];
            faces.push((Face { bbox: regress(boxes[k].b, reg), score, landmarks }, reg));
        }
        let as_candidates: Vec<Candidate> =
            faces.iter().map(|(f, reg)| Candidate { b: f.bbox, score: f.score, reg: *reg }).collect();
        Ok(nms_order(&as_candidates, 0.7, Overlap::Min).into_iter().map(|i| faces[i].0).collect())
    }

    /// Stage 2: R-Net keeps the boxes it finds a face in (probability > `threshold`),
    /// with its score and regression.
    fn refine(&self, sums: &Sums, boxes: Vec<Candidate>, threshold: f32) -> Result<Vec<Candidate>, String> {
        let Some((kept, out)) = self.run_on_crops(sums, Stage::RNet, &boxes)? else { return Ok(Vec::new()) };
        Ok(kept
            .iter()
            .enumerate()
            .filter(|&(row, _)| out.prob[row] > threshold)
            .map(|(row, &k)| {
                let e = &out.extra_data[row * out.extra..row * out.extra + 4];
                Candidate { b: boxes[k].b, score: out.prob[row], reg: [e[0], e[1], e[2], e[3]] }
            })
            .collect())
    }

    /// Runs `stage` on the crops of `boxes` (at its side); returns which boxes had a
    /// non-empty crop, in order, with the outputs row by row. None when no box had one.
    fn run_on_crops(
        &self,
        sums: &Sums,
        stage: Stage,
        boxes: &[Candidate],
    ) -> Result<Option<(Vec<usize>, NetOutput)>, String> {
        let side = stage.side();
        let regions: Vec<(usize, [usize; 4])> =
            boxes.iter().enumerate().filter_map(|(k, c)| crop_region(c.b, sums).map(|r| (k, r))).collect();
        if regions.is_empty() {
            return Ok(None);
        }
        let mut x = vec![0.0; regions.len() * side * side * 3];
        x.par_chunks_mut(side * side * 3)
            .zip(regions.par_iter())
            .for_each(|(dst, (_, region))| sums.area_resize(*region, side, side, dst));
        let out = self.run(stage, &x, [regions.len(), side, side, 3])?;
        Ok(Some((regions.into_iter().map(|(k, _)| k).collect(), out)))
    }
}

/// facenet-pytorch's crop of a box: corners truncated toward zero, read 1-based and
/// clipped to the image: columns x1−1 .. x2, rows y1−1 .. y2. As [x0, y0, width, height];
/// None when nothing is left.
fn crop_region(b: [f32; 4], sums: &Sums) -> Option<[usize; 4]> {
    let [x1, y1, x2, y2] = b.map(|v| v.trunc() as i64);
    let (x, y) = (x1.max(1), y1.max(1));
    let (ex, ey) = (x2.min(sums.width as i64), y2.min(sums.height as i64));
    (ex > x - 1 && ey > y - 1)
        .then(|| [(x - 1) as usize, (y - 1) as usize, (ex - x + 1) as usize, (ey - y + 1) as usize])
}

/// The image's summed-area table: `at(y, x)` is the sum of each channel over rows < y and
/// columns < x. Every pyramid level and every R-/O-Net crop is an area resize of the
/// image; with the table each output cell costs four reads instead of a pass over its
/// input cells (levels from a 640×360 frame read the whole frame ten times otherwise).
/// Sums are u32 and wrap: a cell's sum is a difference of four, exact whenever the true
/// sum fits (any region under 16 million pixels).
struct Sums {
    table: Vec<u32>,
    width: usize,
    height: usize,
}

impl Sums {
    fn of(img: Image) -> Self {
        let stride = (img.width + 1) * 3;
        let mut table = vec![0u32; (img.height + 1) * stride];
        for (y, row) in img.rgb.chunks_exact(img.width * 3).enumerate() {
            let (above, below) = table.split_at_mut((y + 1) * stride);
            let above = &above[y * stride..];
            let mut run = [0u32; 3];
            for (x, px) in row.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    run[c] = run[c].wrapping_add(px[c] as u32);
                    let at = (x + 1) * 3 + c;
                    below[at] = above[at].wrapping_add(run[c]);
                }
            }
        }
        Sums { table, width: img.width, height: img.height }
    }

    /// The sums of channel 0..3 over rows y0..y1, columns x0..x1.
    fn region(&self, [y0, y1]: [usize; 2], [x0, x1]: [usize; 2]) -> [u32; 3] {
        let stride = (self.width + 1) * 3;
        let at = |y: usize, x: usize, c: usize| self.table[y * stride + x * 3 + c];
        std::array::from_fn(|c| {
            at(y1, x1, c).wrapping_sub(at(y0, x1, c)).wrapping_sub(at(y1, x0, c)).wrapping_add(at(y0, x0, c))
        })
    }

    /// The region [x0, y0, w, h] area-resized to `oh × ow` (each output cell the mean of
    /// input cells ⌊i·in/out⌋ .. ⌈(i+1)·in/out⌉, PyTorch's adaptive average pooling),
    /// scaled to (x − 127.5)/128, into `out` [oh, ow, 3].
    fn area_resize(&self, region: [usize; 4], oh: usize, ow: usize, out: &mut [f32]) {
        let [x0, y0, w, h] = region;
        let bins = |start: usize, n_in: usize, n_out: usize| -> Vec<[usize; 2]> {
            (0..n_out).map(|i| [start + i * n_in / n_out, start + ((i + 1) * n_in).div_ceil(n_out)]).collect()
        };
        let (rows, cols) = (bins(y0, h, oh), bins(x0, w, ow));
        out.par_chunks_mut(ow * 3).zip(rows.par_iter()).for_each(|(line, &r)| {
            for (px, &c) in line.chunks_exact_mut(3).zip(&cols) {
                let count = ((r[1] - r[0]) * (c[1] - c[0])) as f32;
                for (v, sum) in px.iter_mut().zip(self.region(r, c)) {
                    *v = (sum as f32 / count - 127.5) * 0.0078125;
                }
            }
        });
    }
}

/// The box moved by a regression, each offset scaled by the box's side (+1, as MTCNN's
/// boxes count pixels inclusively).
fn regress(b: [f32; 4], r: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [b[0] + r[0] * w, b[1] + r[1] * h, b[2] + r[2] * w, b[3] + r[3] * h]
}

/// The square with the box's centre and its longer side.
fn square(b: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let l = w.max(h);
    let (x1, y1) = (b[0] + w * 0.5 - l * 0.5, b[1] + h * 0.5 - l * 0.5);
    [x1, y1, x1 + l, y1 + l]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overlap {
    /// Intersection over union, areas (x2 − x1)·(y2 − y1) (torchvision's `nms`).
    Union,
    /// Intersection over the smaller area, areas (x2 − x1 + 1)·(y2 − y1 + 1).
    Min,
}

/// Greedy NMS: the indices of the boxes kept, by descending score (stable), each
/// suppressing the later ones that overlap it by more than `threshold`.
fn nms_order(c: &[Candidate], threshold: f32, how: Overlap) -> Vec<usize> {
    let plus = if how == Overlap::Min { 1.0 } else { 0.0 };
    let area = |b: &[f32; 4]| (b[2] - b[0] + plus) * (b[3] - b[1] + plus);
    let mut order: Vec<usize> = (0..c.len()).collect();
    order.sort_by(|&a, &b| c[b].score.total_cmp(&c[a].score));
    let mut gone = vec![false; c.len()];
    let mut keep = Vec::new();
    for (n, &i) in order.iter().enumerate() {
        if gone[i] {
            continue;
        }
        keep.push(i);
        let (bi, ai) = (&c[i].b, area(&c[i].b));
        for &j in &order[n + 1..] {
            if gone[j] {
                continue;
            }
            let bj = &c[j].b;
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0]) + plus).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1]) + plus).max(0.0);
            let inter = w * h;
            let overlap = match how {
                Overlap::Union => inter / (ai + area(bj) - inter),
                Overlap::Min => inter / ai.min(area(bj)),
            };
            if overlap > threshold {
                gone[j] = true;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(b: [f32; 4], score: f32) -> Candidate {
        Candidate { b, score, reg: [0.0; 4] }
    }

    #[test]
    fn nms_keeps_the_best_of_each_cluster_by_union_and_by_min() {
        let c = [
            cand([0.0, 0.0, 10.0, 10.0], 0.8),
            cand([1.0, 1.0, 11.0, 11.0], 0.9), // IoU with the first: 81/119 = 0.68
            cand([20.0, 20.0, 30.0, 30.0], 0.7),
            cand([2.0, 2.0, 6.0, 6.0], 0.95), // inside the first two: small IoU, overlap 1 by min
        ];
        assert_eq!(nms_order(&c, 0.5, Overlap::Union), vec![3, 1, 2]);
        assert_eq!(nms_order(&c, 0.7, Overlap::Union), vec![3, 1, 0, 2]);
        assert_eq!(nms_order(&c, 0.7, Overlap::Min), vec![3, 2]);
        // Equal scores keep their order.
        let tie = [cand([0.0, 0.0, 1.0, 1.0], 0.5), cand([5.0, 5.0, 6.0, 6.0], 0.5)];
        assert_eq!(nms_order(&tie, 0.5, Overlap::Union), vec![0, 1]);
    }

    #[test]
    fn boxes_square_around_their_centre_and_regress_by_their_side() {
        assert_eq!(square([10.0, 20.0, 14.0, 30.0]), [7.0, 20.0, 17.0, 30.0]);
        assert_eq!(regress([0.0, 0.0, 9.0, 19.0], [0.1, -0.1, 0.5, 0.0]), [1.0, -2.0, 14.0, 19.0]);
    }

    #[test]
    fn crops_are_one_based_truncated_and_clipped() {
        let rgb = vec![0u8; 20 * 10 * 3];
        let sums = Sums::of(Image { rgb: &rgb, width: 20, height: 10 });
        assert_eq!(crop_region([2.7, 3.2, 8.9, 7.0], &sums), Some([1, 2, 7, 5]));
        assert_eq!(crop_region([-5.0, -0.5, 30.0, 40.0], &sums), Some([0, 0, 20, 10]));
        assert_eq!(crop_region([25.0, 1.0, 30.0, 5.0], &sums), None, "right of the image");
    }

    #[test]
    fn summed_areas_match_direct_sums_over_every_region() {
        let (w, h) = (7, 5);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 97 % 251) as u8).collect();
        let sums = Sums::of(Image { rgb: &rgb, width: w, height: h });
        for (y0, y1) in (0..=h).flat_map(|a| (a..=h).map(move |b| (a, b))) {
            for (x0, x1) in (0..=w).flat_map(|a| (a..=w).map(move |b| (a, b))) {
                let direct: [u32; 3] = std::array::from_fn(|c| {
                    (y0..y1)
                        .flat_map(|y| (x0..x1).map(move |x| (y, x)))
                        .map(|(y, x)| rgb[(y * w + x) * 3 + c] as u32)
                        .sum()
                });
                assert_eq!(sums.region([y0, y1], [x0, x1]), direct, "rows {y0}..{y1}, columns {x0}..{x1}");
            }
        }
    }

    #[test]
    fn area_resize_averages_the_pytorch_bins() {
        // One row 0, 10, 20, 30, 40 (grey) into 3 cells: bins [0,2) [1,4) [3,5).
        let rgb: Vec<u8> = [0u8, 10, 20, 30, 40].iter().flat_map(|&v| [v, v, v]).collect();
        let sums = Sums::of(Image { rgb: &rgb, width: 5, height: 1 });
        let mut out = vec![0.0; 3 * 3];
        sums.area_resize([0, 0, 5, 1], 1, 3, &mut out);
        let means: Vec<f32> = out.chunks(3).map(|p| p[0] / 0.0078125 + 127.5).collect();
        assert_eq!(means, vec![5.0, 20.0, 35.0]);
        // Up-sampling repeats cells: 2 → 3 gives bins [0,1) [0,2) [1,2).
        let mut up = vec![0.0; 3 * 3];
        sums.area_resize([3, 0, 2, 1], 1, 3, &mut up);
        let means: Vec<f32> = up.chunks(3).map(|p| p[0] / 0.0078125 + 127.5).collect();
        assert_eq!(means, vec![30.0, 35.0, 40.0]);
    }
}
