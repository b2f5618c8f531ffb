//! One clip, ready for the cache and the loader: the sampled frames of a video, quality
//! filtered, cropped around the face (or the centre) and resized to `frame_size`, as u8.

use std::collections::HashMap;

use super::faces::{self, FaceBox};
use super::image::RgbImage;
use super::quality;
use super::resize::crop_resize;

/// `frames` frames of `side × side × 3` bytes, one after the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipFrames {
    pub frames: usize,
    pub side: usize,
    pub data: Vec<u8>,
}

impl ClipFrames {
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// What a clip keeps of each sampled frame: the crop around its face box (the centre
/// square without one), resized to `side`², unless the quality filter rejects the frame.
/// It runs on each frame as the decoder gives it out, so no full-size frame is kept.
#[derive(Debug, Clone, Copy)]
pub struct FrameCrops<'a> {
    /// Face boxes by frame index.
    pub boxes: &'a HashMap<usize, FaceBox>,
    pub side: usize,
    /// 0 keeps every frame (and measures nothing: on 720p that costs a fifth of `prepare`).
    pub quality_threshold: f64,
    pub face_scale: f64,
}

impl FrameCrops<'_> {
    /// Frame `index`'s crop, or `None` when the quality filter rejects it.
    pub fn crop(&self, index: usize, img: RgbImage) -> Option<Vec<u8>> {
        if self.quality_threshold > 0.0
            && quality::judge(&quality::measure(img), self.quality_threshold).is_some()
        {
            return None;
        }
        let crop = faces::crop_for(self.boxes, index, self.face_scale, img.width, img.height);
        Some(crop_resize(img, crop, self.side))
    }
}

/// The clip from its sampled frames' crops of `side`², in sampling order: a frame without
/// one (rejected by the quality filter, or a wanted frame the decoder never produced: a
/// gap in a variable-frame-rate stream, a corrupt packet) takes the nearest frame's crop.
/// Also returns how many frames were replaced.
pub fn assemble(crops: &[Option<Vec<u8>>], side: usize) -> Result<(ClipFrames, usize), String> {
    let good: Vec<bool> = crops.iter().map(Option::is_some).collect();
    let use_frame = quality::replacements(&good).ok_or_else(|| {
        format!("none of the {} sampled frames was decoded and passed the quality filter", crops.len())
    })?;
    let mut data = Vec::with_capacity(crops.len() * side * side * 3);
    for k in use_frame {
        data.extend_from_slice(crops[k].as_deref().expect("replacements name frames with a crop"));
    }
    let replaced = good.iter().filter(|g| !**g).count();
    Ok((ClipFrames { frames: crops.len(), side, data }, replaced))
}
