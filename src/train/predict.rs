//! `predict`: the fake probability of a video and the scores of its sampled frames, from
//! a trained network, or why the video could not be scored.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::backend::ops::Backend;
use crate::config::Config;
use crate::model::resnet::ResNet;

/// The scores of the frames a prediction sampled.
#[derive(Debug, Clone, Serialize)]
pub struct FrameScores {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub scores: Vec<f64>,
}

impl FrameScores {
    #[cfg(feature = "video")]
    fn of(probabilities: Vec<f64>) -> Self {
        let mean = probabilities.iter().sum::<f64>() / probabilities.len().max(1) as f64;
        FrameScores {
            count: probabilities.len(),
            mean,
            min: probabilities.iter().copied().fold(f64::INFINITY, f64::min),
            max: probabilities.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            scores: probabilities,
        }
    }
}

/// One video's outcome, as `predict --json` prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Prediction {
    Scored { video: String, fake_probability: f64, frames: FrameScores },
    Failed { video: String, error: String },
}

impl Prediction {
    pub fn is_failure(&self) -> bool {
        matches!(self, Prediction::Failed { .. })
    }
}

impl fmt::Display for Prediction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prediction::Scored { video, fake_probability, frames } => write!(
                f,
                "{video}: fake probability {fake_probability:.4} (frames: mean {:.4}, min {:.4}, max {:.4}, {} frames)",
                frames.mean, frames.min, frames.max, frames.count
            ),
            Prediction::Failed { video, error } => write!(f, "{video}: error: {error}"),
        }
    }
}

/// Decodes `video` as the config's data settings say, and scores it with `net`.
#[cfg(feature = "video")]
pub fn predict_video<B: Backend>(b: &B, net: &ResNet<B>, config: &Config, video: &Path) -> Prediction {
    let name = video.display().to_string();
    match score(b, net, config, video) {
        Ok((fake_probability, frames)) => {
            Prediction::Scored { video: name, fake_probability, frames: FrameScores::of(frames) }
        }
        Err(error) => Prediction::Failed { video: name, error },
    }
}

/// The clip's probability and its frames'.
#[cfg(feature = "video")]
fn score<B: Backend>(
    b: &B,
    net: &ResNet<B>,
    config: &Config,
    video: &Path,
) -> Result<(f64, Vec<f64>), String> {
    use std::sync::Arc;

    use crate::data::cache::{ClipSettings, FrameCache};
    use crate::data::loader::{Batch, LoaderSettings, Pixels, StoredFrames, clip_op};
    use crate::data::manifest::{Label, Split, VideoEntry};
    use crate::data::preprocess::FrameFormat;
    use crate::data::sources::{ClipSource, VideoSource};
    use crate::train::metrics::sigmoid;

    let cache = Arc::new(FrameCache::new(None, 0).map_err(|e| e.to_string())?);
    // The label is unknown and unused: the source only decodes.
    let entry = VideoEntry {
        path: video.to_path_buf(),
        label: Label::Real,
        split: Split::Test,
        group: video.display().to_string(),
    };
    let faces = crate::data::face_boxes::FaceSettings::from_config(&config.data);
    let detector = crate::data::face_boxes::detector_for(&config.data)?;
    let source = VideoSource::new(vec![entry], cache, ClipSettings::from_config(&config.data), 2)
        .with_faces(faces, detector);
    let frames = source.load(0)?;
    let ls = LoaderSettings {
        batch_size: 1,
        num_workers: 1,
        prefetch_factor: 1,
        input_size: config.model.input_size as usize,
        seed: 0,
        train: false,
        max_bad_fraction: 0.0,
    };
    let batch = Batch {
        index: 0,
        clips: vec![0],
        frames_per_clip: frames.frames,
        side: ls.input_size,
        pixels: Pixels::Stored(StoredFrames {
            format: FrameFormat::Rgb,
            h: frames.side,
            w: frames.side,
            data: frames.data.clone(),
            ops: vec![clip_op(&ls, frames.side, 0, 0)],
        }),
        targets: vec![0.0],
    };
    let mut micro = 1;
    let (clip, frame) =
        crate::train::step::infer(b, net, &batch, &mut micro, crate::train::step::PreprocessOn::Device)
            .map_err(|e| e.to_string())?;
    Ok((sigmoid(clip[0] as f64), frame.iter().map(|&f| sigmoid(f as f64)).collect()))
}

/// Without FFmpeg nothing can be decoded: every video fails, saying why.
#[cfg(not(feature = "video"))]
pub fn predict_video<B: Backend>(_: &B, _: &ResNet<B>, _: &Config, video: &Path) -> Prediction {
    Prediction::Failed {
        video: video.display().to_string(),
        error: "this dfengine was built without the `video` feature (FFmpeg): it cannot decode videos"
            .to_string(),
    }
}
