//! Range checks that types alone cannot express. Each names its dotted key so that
//! the loader can say which file or override set the bad value.

use toml::Value;

use super::schema::{Config, DatasetLayout, FaceSource};

#[derive(Debug)]
pub struct Violation {
    pub key: &'static str,
    /// The offending value when it did not come from the user's input (a default that
    /// conflicts with another key); the loader shows the user's own value otherwise.
    pub value: Option<Value>,
    pub problem: String,
}

fn at_least(key: &'static str, value: u64, min: u64) -> Result<(), Violation> {
    if value < min {
        return Err(Violation {
            key,
            value: Some(Value::Integer(value as i64)),
            problem: format!("must be ≥ {min}"),
        });
    }
    Ok(())
}

fn fraction(key: &'static str, value: f64) -> Result<(), Violation> {
    if !(value > 0.0 && value <= 1.0) {
        return Err(Violation { key, value: Some(Value::Float(value)), problem: "must be in (0, 1]".into() });
    }
    Ok(())
}

fn positive(key: &'static str, value: f64) -> Result<(), Violation> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Violation {
            key,
            value: Some(Value::Float(value)),
            problem: "must be a finite number > 0".into(),
        });
    }
    Ok(())
}

fn non_negative(key: &'static str, value: f64) -> Result<(), Violation> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(Violation {
            key,
            value: Some(Value::Float(value)),
            problem: "must be a finite number ≥ 0".into(),
        });
    }
    Ok(())
}

fn non_empty(key: &'static str, value: &str, what: &str) -> Result<(), Violation> {
    if value.trim().is_empty() {
        return Err(Violation {
            key,
            value: Some(Value::String(value.into())),
            problem: format!("must name {what}"),
        });
    }
    Ok(())
}

/// Returns the first violation, in the order the tables appear in a config file.
pub fn validate(c: &Config) -> Result<(), Violation> {
    let m = &c.model;
    at_least("model.input_size", m.input_size.into(), 16)?;
    if m.input_size > c.data.frame_size {
        return Err(Violation {
            key: "model.input_size",
            value: Some(Value::Integer(m.input_size.into())),
            problem: format!(
                "must be ≤ [data] frame_size = {} (the crop is taken from the frame)",
                c.data.frame_size
            ),
        });
    }

    let d = &c.data;
    if d.layout != DatasetLayout::Synthetic {
        non_empty("data.root", &d.root, "the dataset folder")?;
    }
    at_least("data.max_frames", d.max_frames.into(), 1)?;
    at_least("data.frame_size", d.frame_size.into(), 16)?;
    non_negative("data.quality_threshold", d.quality_threshold)?;
    if !["raw", "c0", "c23", "c40"].contains(&d.compression.as_str()) {
        return Err(Violation {
            key: "data.compression",
            value: Some(Value::String(d.compression.clone())),
            problem: "must be one of \"raw\", \"c0\", \"c23\", \"c40\"".into(),
        });
    }
    for (key, f) in [
        ("data.val_fraction", d.val_fraction),
        ("data.test_fraction", d.test_fraction),
        ("data.max_bad_fraction", d.max_bad_fraction),
    ] {
        if !(0.0..1.0).contains(&f) {
            return Err(Violation { key, value: Some(Value::Float(f)), problem: "must be in [0, 1)".into() });
        }
    }
    if d.val_fraction + d.test_fraction >= 1.0 {
        return Err(Violation {
            key: "data.test_fraction",
            value: Some(Value::Float(d.test_fraction)),
            problem: format!("plus [data] val_fraction = {} leaves nothing to train on", d.val_fraction),
        });
    }
    at_least("data.synthetic_videos", d.synthetic_videos.into(), 8)?;
    if !(0.0..=1.0).contains(&d.synthetic_difficulty) {
        return Err(Violation {
            key: "data.synthetic_difficulty",
            value: Some(Value::Float(d.synthetic_difficulty)),
            problem: "must be in [0, 1]".into(),
        });
    }
    if d.enable_cache {
        non_empty("data.cache_dir", &d.cache_dir, "a folder when enable_cache = true")?;
    }
    if !(d.face_margin >= 1.0 && d.face_margin.is_finite()) {
        return Err(Violation {
            key: "data.face_margin",
            value: Some(Value::Float(d.face_margin)),
            problem: "must be ≥ 1 (1 crops the bare face box)".into(),
        });
    }
    if !(d.face_min_size >= 1.0 && d.face_min_size.is_finite()) {
        return Err(Violation {
            key: "data.face_min_size",
            value: Some(Value::Float(d.face_min_size)),
            problem: "must be ≥ 1 pixel".into(),
        });
    }
    if let Some(t) = d.face_thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(Violation {
            key: "data.face_thresholds",
            value: Some(Value::Array(d.face_thresholds.iter().map(|&v| Value::Float(v)).collect())),
            problem: format!("{t} is not a probability: each must be in [0, 1]"),
        });
    }
    at_least("data.faces_per_clip", d.faces_per_clip.into(), 1)?;
    if d.faces_per_clip > d.max_frames {
        return Err(Violation {
            key: "data.faces_per_clip",
            value: Some(Value::Integer(d.faces_per_clip.into())),
            problem: format!("must be ≤ [data] max_frames = {} (each face needs frames)", d.max_frames),
        });
    }
    if d.faces == FaceSource::Detect {
        non_empty("data.face_detector", &d.face_detector, "the MTCNN weights when faces = \"detect\"")?;
    }

    let l = &c.dataloader;
    at_least("dataloader.batch_size", l.batch_size.into(), 1)?;
    at_least("dataloader.prefetch_factor", l.prefetch_factor.into(), 1)?;

    let t = &c.train;
    at_least("train.epochs", t.epochs.into(), 1)?;
    positive("train.lr", t.lr)?;
    non_negative("train.weight_decay", t.weight_decay)?;
    at_least("train.accumulation_steps", t.accumulation_steps.into(), 1)?;
    if !(0.0..1.0).contains(&t.warmup_fraction) {
        return Err(Violation {
            key: "train.warmup_fraction",
            value: Some(Value::Float(t.warmup_fraction)),
            problem: "must be in [0, 1)".into(),
        });
    }
    non_negative("train.grad_clip", t.grad_clip)?;
    non_empty("train.out_dir", &t.out_dir, "the run folder")?;

    let g = &c.gpu.memory_management;
    fraction("gpu.memory_management.gpu_threshold", g.gpu_threshold)?;
    fraction("gpu.memory_management.cpu_threshold", g.cpu_threshold)?;
    positive("gpu.memory_management.auto_cleanup_interval", g.auto_cleanup_interval)?;
    at_least("gpu.memory_management.calm_steps", g.calm_steps.into(), 1)?;
    Ok(())
}
