//! The video index: which videos a dataset root holds, their labels, and their split.
//!
//! Layouts read as their users have them on disk — FaceForensics++, Celeb-DF v2, DFDC, a
//! CSV manifest, or folders of extracted frames — and detected when `layout = "auto"`.
//! Splits come from the dataset's official lists where it has them; elsewhere each
//! *group* (a source video and every fake made from it) is placed by a stable hash of
//! its name, so that a fake never lands in another split than its original, and the
//! same files always give the same splits.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{DataConfig, DatasetLayout};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Real,
    Fake,
}

impl Label {
    /// The training target: 1 for fake.
    pub fn target(self) -> f32 {
        match self {
            Label::Real => 0.0,
            Label::Fake => 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoEntry {
    /// A video file, or a folder of frame images for the frames layout.
    pub path: PathBuf,
    pub label: Label,
    pub split: Split,
    /// Videos that must share a split (a source and its fakes).
    pub group: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundLayout {
    Faceforensics,
    CelebDf,
    Dfdc,
    Csv,
    Frames,
}

impl fmt::Display for FoundLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FoundLayout::Faceforensics => "FaceForensics++",
            FoundLayout::CelebDf => "Celeb-DF v2",
            FoundLayout::Dfdc => "DFDC",
            FoundLayout::Csv => "CSV manifest",
            FoundLayout::Frames => "extracted frames",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error("{}: no dataset layout recognised; expected one of:\n{EXPECTED}", root.display())]
    Unrecognised { root: PathBuf },
    #[error("{}: the {layout} layout holds no videos{detail}", root.display())]
    Empty { root: PathBuf, layout: FoundLayout, detail: String },
    #[error("the synthetic layout generates its clips in memory: there is nothing to index")]
    Synthetic,
}

const EXPECTED: &str = "  FaceForensics++  original_sequences/ and manipulated_sequences/
  Celeb-DF v2      Celeb-real/, YouTube-real/, Celeb-synthesis/
  DFDC             dfdc_train_part_*/metadata.json
  CSV manifest     a .csv file, or a folder with manifest.csv (path,label[,split][,group])
  frames           real/ and fake/ folders holding one folder of images per video";

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub root: PathBuf,
    pub layout: FoundLayout,
    pub entries: Vec<VideoEntry>,
}

/// Videos per split and label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SplitCounts {
    pub real: usize,
    pub fake: usize,
}

impl Manifest {
    pub fn counts(&self) -> BTreeMap<Split, SplitCounts> {
        let mut out: BTreeMap<Split, SplitCounts> = [Split::Train, Split::Val, Split::Test]
            .into_iter()
            .map(|s| (s, SplitCounts::default()))
            .collect();
        for e in &self.entries {
            let c = out.entry(e.split).or_default();
            match e.label {
                Label::Real => c.real += 1,
                Label::Fake => c.fake += 1,
            }
        }
        out
    }

    pub fn split(&self, split: Split) -> impl Iterator<Item = &VideoEntry> {
        self.entries.iter().filter(move |e| e.split == split)
    }
}

/// Reads the dataset `config` names.
pub fn load(config: &DataConfig) -> Result<Manifest, ManifestError> {
    let root = PathBuf::from(&config.root);
    let layout = match config.layout {
        DatasetLayout::Synthetic => return Err(ManifestError::Synthetic),
        DatasetLayout::Auto => detect(&root)?,
        DatasetLayout::Faceforensics => FoundLayout::Faceforensics,
        DatasetLayout::CelebDf => FoundLayout::CelebDf,
        DatasetLayout::Dfdc => FoundLayout::Dfdc,
        DatasetLayout::Csv => FoundLayout::Csv,
        DatasetLayout::Frames => FoundLayout::Frames,
    };
    if !root.exists() {
        return Err(ManifestError::Invalid { path: root, problem: "no such file or folder".into() });
    }
    let splitter = Splitter { val: config.val_fraction, test: config.test_fraction };
    let mut entries = match layout {
        FoundLayout::Faceforensics => faceforensics(&root, config, &splitter)?,
        FoundLayout::CelebDf => celeb_df(&root, &splitter)?,
        FoundLayout::Dfdc => dfdc(&root, &splitter)?,
        FoundLayout::Csv => csv(&root, &splitter)?,
        FoundLayout::Frames => frames(&root, &splitter)?,
    };
    if entries.is_empty() {
        let detail = match layout {
            FoundLayout::Faceforensics => format!(" for compression = \"{}\"", config.compression),
            _ => String::new(),
        };
        return Err(ManifestError::Empty { root, layout, detail });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Manifest { root, layout, entries })
}

/// Which layout `root` holds, by its marker files and folders.
pub fn detect(root: &Path) -> Result<FoundLayout, ManifestError> {
    let has = |name: &str| root.join(name).exists();
    if root.is_file() && root.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        || has("manifest.csv")
    {
        Ok(FoundLayout::Csv)
    } else if has("original_sequences") || has("manipulated_sequences") {
        Ok(FoundLayout::Faceforensics)
    } else if has("Celeb-real") || has("Celeb-synthesis") || has("YouTube-real") {
        Ok(FoundLayout::CelebDf)
    } else if dir_names(root).iter().any(|n| n.starts_with("dfdc_train_part_")) {
        Ok(FoundLayout::Dfdc)
    } else if ["real", "fake", "train", "val", "test"].iter().any(|d| has(d)) {
        Ok(FoundLayout::Frames)
    } else {
        Err(ManifestError::Unrecognised { root: root.to_path_buf() })
    }
}

/// Places groups by hash where a dataset has no official split.
struct Splitter {
    val: f64,
    test: f64,
}

impl Splitter {
    fn place(&self, group: &str) -> Split {
        // FNV-1a: stable across runs, platforms and Rust versions (unlike std's hasher).
        let h = group
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        if u < self.test {
            Split::Test
        } else if u < self.test + self.val {
            Split::Val
        } else {
            Split::Train
        }
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn is_video(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["mp4", "avi", "mov", "mkv", "webm"].contains(&e.to_ascii_lowercase().as_str()))
}

fn videos_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_video(p))
        .collect();
    v.sort();
    v
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read_text(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|e| ManifestError::Invalid {
        path: path.to_path_buf(),
        problem: format!("cannot read: {e}"),
    })
}

/// FaceForensics++: official pair splits (`train.json` …, at the root or in `splits/`)
/// decide where a source and its fakes go; videos they do not mention are hashed by
/// source id.
fn faceforensics(
    root: &Path,
    cfg: &DataConfig,
    splitter: &Splitter,
) -> Result<Vec<VideoEntry>, ManifestError> {
    let mut official: HashMap<String, Split> = HashMap::new();
    for (name, split) in [("train", Split::Train), ("val", Split::Val), ("test", Split::Test)] {
        let file = [root.join(format!("{name}.json")), root.join("splits").join(format!("{name}.json"))]
            .into_iter()
            .find(|p| p.is_file());
        let Some(file) = file else { continue };
        let pairs: Vec<Vec<String>> =
            serde_json::from_str(&read_text(&file)?).map_err(|e| ManifestError::Invalid {
                path: file.clone(),
                problem: format!("expected a list of [\"071\", \"054\"] pairs: {e}"),
            })?;
        for pair in pairs {
            for id in &pair {
                official.insert(id.clone(), split);
            }
        }
    }
    // A source id decides: "071" for an original, the target "071" of fake "071_054".
    let place = |group: &str| official.get(group).copied().unwrap_or_else(|| splitter.place(group));
    let mut out = Vec::new();
    let comp = &cfg.compression;
    for source in dir_names(&root.join("original_sequences")) {
        for path in videos_in(&root.join("original_sequences").join(&source).join(comp).join("videos")) {
            let id = stem(&path);
            let group = id.split("__").next().unwrap_or(&id).to_string();
            out.push(VideoEntry { split: place(&group), label: Label::Real, group, path });
        }
    }
    let manipulated = root.join("manipulated_sequences");
    let methods = dir_names(&manipulated);
    for wanted in &cfg.methods {
        if !methods.contains(wanted) {
            return Err(ManifestError::Invalid {
                path: manipulated.clone(),
                problem: format!(
                    "[data] methods names {wanted:?}, which is not here (found: {})",
                    methods.join(", ")
                ),
            });
        }
    }
    for method in methods.iter().filter(|m| cfg.methods.is_empty() || cfg.methods.contains(m)) {
        for path in videos_in(&manipulated.join(method).join(comp).join("videos")) {
            let id = stem(&path);
            let group = id.split(['_', '.']).next().unwrap_or(&id).to_string();
            out.push(VideoEntry { split: place(&group), label: Label::Fake, group, path });
        }
    }
    Ok(out)
}

/// Celeb-DF v2: the listed test videos (`1` = real, `0` = fake) form the test split;
/// the rest go to train/val by the identity they show.
fn celeb_df(root: &Path, splitter: &Splitter) -> Result<Vec<VideoEntry>, ManifestError> {
    let list = root.join("List_of_testing_videos.txt");
    let mut test: HashMap<String, Label> = HashMap::new();
    if list.is_file() {
        for (i, line) in read_text(&list)?.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = |problem: String| ManifestError::Invalid {
                path: list.clone(),
                problem: format!("line {}: {problem}", i + 1),
            };
            let (label, video) = line
                .trim()
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad(format!("expected `<label> <folder>/<file>.mp4`, got {line:?}")))?;
            let label = match label {
                "1" => Label::Real,
                "0" => Label::Fake,
                other => return Err(bad(format!("label {other:?}: expected 1 (real) or 0 (fake)"))),
            };
            // The list names `<folder>/<file>`; a copy with a `videos/` level matches too.
            test.insert(video.trim().replace("/videos/", "/"), label);
        }
    }
    let mut out = Vec::new();
    for (folder, label) in
        [("Celeb-real", Label::Real), ("YouTube-real", Label::Real), ("Celeb-synthesis", Label::Fake)]
    {
        let dir = root.join(folder);
        let dir = if dir.join("videos").is_dir() { dir.join("videos") } else { dir };
        for path in videos_in(&dir) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let key = format!("{folder}/{name}");
            let id = stem(&path);
            // id0_0001 (real) and id0_id16_0001 (fake of id0's video) share group id0.
            let group = if folder == "YouTube-real" {
                format!("yt{id}")
            } else {
                id.split('_').next().unwrap_or(&id).to_string()
            };
            let split = match test.get(&key) {
                Some(&listed) if listed != label => {
                    return Err(ManifestError::Invalid {
                        path: list.clone(),
                        problem: format!("{key} is listed as {listed:?} but lies in {folder}"),
                    });
                }
                Some(_) => Split::Test,
                // Never let a test identity's other videos into training.
                None => match splitter.place(&group) {
                    Split::Test => Split::Val,
                    s => s,
                },
            };
            out.push(VideoEntry { path, label, split, group });
        }
    }
    Ok(out)
}

/// DFDC: every `dfdc_train_part_*` folder's `metadata.json` (directly inside, or one
/// level further down) labels the videos beside it; a fake is grouped with its original.
fn dfdc(root: &Path, splitter: &Splitter) -> Result<Vec<VideoEntry>, ManifestError> {
    #[derive(serde::Deserialize)]
    struct Meta {
        label: String,
        original: Option<String>,
    }
    let mut out = Vec::new();
    for part in dir_names(root).into_iter().filter(|n| n.starts_with("dfdc_train_part_")) {
        let dir = root.join(&part);
        let meta_dir = if dir.join("metadata.json").is_file() { dir.clone() } else { dir.join(&part) };
        let meta_path = meta_dir.join("metadata.json");
        if !meta_path.is_file() {
            return Err(ManifestError::Invalid {
                path: dir,
                problem: "no metadata.json here or one level below".into(),
            });
        }
        let meta: BTreeMap<String, Meta> =
            serde_json::from_str(&read_text(&meta_path)?).map_err(|e| ManifestError::Invalid {
                path: meta_path.clone(),
                problem: format!(
                    "expected {{\"x.mp4\": {{\"label\": \"FAKE\"|\"REAL\", \"original\": \"y.mp4\"}}}}: {e}"
                ),
            })?;
        for (name, m) in meta {
            let label = match m.label.to_ascii_uppercase().as_str() {
                "REAL" => Label::Real,
                "FAKE" => Label::Fake,
                other => {
                    return Err(ManifestError::Invalid {
                        path: meta_path.clone(),
                        problem: format!("{name}: label {other:?}, expected \"REAL\" or \"FAKE\""),
                    });
                }
            };
            let group = m.original.filter(|_| label == Label::Fake).unwrap_or_else(|| name.clone());
            out.push(VideoEntry { path: meta_dir.join(&name), label, split: splitter.place(&group), group });
        }
    }
    Ok(out)
}

/// `path,label[,split][,group]`, paths relative to the CSV's folder; labels 0/1 or
/// real/fake; a header row is recognised and skipped.
fn csv(root: &Path, splitter: &Splitter) -> Result<Vec<VideoEntry>, ManifestError> {
    let file = if root.is_dir() { root.join("manifest.csv") } else { root.to_path_buf() };
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let text = read_text(&file)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if line.trim().is_empty() || (i == 0 && fields[0].eq_ignore_ascii_case("path")) {
            continue;
        }
        let bad = |problem: String| ManifestError::Invalid {
            path: file.clone(),
            problem: format!("line {}: {problem}", i + 1),
        };
        if fields.len() < 2 || fields.len() > 4 {
            return Err(bad(format!("expected path,label[,split][,group], got {} fields", fields.len())));
        }
        let label = match fields[1].to_ascii_lowercase().as_str() {
            "0" | "real" => Label::Real,
            "1" | "fake" => Label::Fake,
            other => return Err(bad(format!("label {other:?}: expected 0/real or 1/fake"))),
        };
        let group =
            fields.get(3).filter(|g| !g.is_empty()).map_or_else(|| fields[0].to_string(), |g| g.to_string());
        let split = match fields.get(2).map(|s| s.to_ascii_lowercase()) {
            None => splitter.place(&group),
            Some(s) if s.is_empty() => splitter.place(&group),
            Some(s) => match s.as_str() {
                "train" => Split::Train,
                "val" | "valid" | "validation" => Split::Val,
                "test" => Split::Test,
                other => return Err(bad(format!("split {other:?}: expected train, val or test"))),
            },
        };
        out.push(VideoEntry { path: base.join(fields[0]), label, split, group });
    }
    Ok(out)
}

/// `{real,fake}/<video>/` folders of images, optionally under `{train,val,test}/`.
fn frames(root: &Path, splitter: &Splitter) -> Result<Vec<VideoEntry>, ManifestError> {
    let mut out = Vec::new();
    let fixed = [("train", Split::Train), ("val", Split::Val), ("test", Split::Test)];
    let has_split_dirs = fixed.iter().any(|(d, _)| root.join(d).is_dir());
    let bases: Vec<(PathBuf, Option<Split>)> = if has_split_dirs {
        fixed.iter().map(|(d, s)| (root.join(d), Some(*s))).collect()
    } else {
        vec![(root.to_path_buf(), None)]
    };
    for (base, split) in bases {
        for (folder, label) in [("real", Label::Real), ("fake", Label::Fake)] {
            for video in dir_names(&base.join(folder)) {
                let path = base.join(folder).join(&video);
                let split = split.unwrap_or_else(|| splitter.place(&video));
                out.push(VideoEntry { path, label, split, group: video });
            }
        }
    }
    Ok(out)
}
