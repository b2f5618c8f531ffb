//! Dataset layouts: each one read from a tiny tree in a temp folder (the index reads
//! names and metadata only, so the files are empty), with its labels, official splits
//! and grouping, plus the errors that name what was expected.

use std::path::{Path, PathBuf};
use std::process::Command;

use dfengine::config::{DataConfig, DatasetLayout};
use dfengine::data::manifest::{self, FoundLayout, Label, ManifestError, Split, VideoEntry};

fn touch(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn data(root: &Path) -> DataConfig {
    DataConfig { root: root.display().to_string(), layout: DatasetLayout::Auto, ..DataConfig::default() }
}

fn find<'a>(entries: &'a [VideoEntry], name: &str) -> &'a VideoEntry {
    entries
        .iter()
        .find(|e| e.path.file_name().is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("{name} not indexed"))
}

fn faceforensics(root: &Path) {
    for id in ["000", "001", "002", "003"] {
        touch(root, &format!("original_sequences/youtube/c23/videos/{id}.mp4"));
    }
    for (a, b) in [("000", "001"), ("001", "000"), ("002", "003"), ("003", "002")] {
        touch(root, &format!("manipulated_sequences/Deepfakes/c23/videos/{a}_{b}.mp4"));
        touch(root, &format!("manipulated_sequences/NeuralTextures/c23/videos/{a}_{b}.mp4"));
    }
    touch(root, "manipulated_sequences/Deepfakes/c40/videos/000_001.mp4");
    write(root, "splits/train.json", r#"[["000", "001"]]"#);
    write(root, "splits/test.json", r#"[["002", "003"]]"#);
}

#[test]
fn faceforensics_follows_the_official_pair_splits() {
    let dir = tempfile::tempdir().unwrap();
    faceforensics(dir.path());
    let m = manifest::load(&data(dir.path())).unwrap();
    assert_eq!(m.layout, FoundLayout::Faceforensics);
    assert_eq!(m.entries.len(), 4 + 8, "c40 files must not be picked up at c23");
    for name in ["000.mp4", "001.mp4", "000_001.mp4", "001_000.mp4"] {
        assert_eq!(find(&m.entries, name).split, Split::Train, "{name}");
    }
    for name in ["002.mp4", "003_002.mp4"] {
        assert_eq!(find(&m.entries, name).split, Split::Test, "{name}");
    }
    assert_eq!(find(&m.entries, "002.mp4").label, Label::Real);
    assert_eq!(find(&m.entries, "002_003.mp4").label, Label::Fake);
    let counts = m.counts();
    assert_eq!((counts[&Split::Train].real, counts[&Split::Train].fake), (2, 4));

    let only = DataConfig { methods: vec!["Deepfakes".into()], ..data(dir.path()) };
    assert_eq!(manifest::load(&only).unwrap().entries.len(), 4 + 4);
    let missing = DataConfig { methods: vec!["FaceSwap".into()], ..data(dir.path()) };
    let err = manifest::load(&missing).unwrap_err().to_string();
    assert!(err.contains("\"FaceSwap\", which is not here (found: Deepfakes, NeuralTextures)"), "{err}");
    let c0 = DataConfig { compression: "c0".into(), ..data(dir.path()) };
    let err = manifest::load(&c0).unwrap_err().to_string();
    assert!(err.contains("holds no videos for compression = \"c0\""), "{err}");
}

#[test]
fn celeb_df_takes_the_listed_test_videos_and_keeps_identities_apart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for f in ["Celeb-real/videos/id0_0000.mp4", "Celeb-real/videos/id1_0000.mp4", "YouTube-real/00001.mp4"] {
        touch(root, f);
    }
    for f in ["Celeb-synthesis/videos/id0_id1_0000.mp4", "Celeb-synthesis/videos/id1_id0_0000.mp4"] {
        touch(root, f);
    }
    write(
        root,
        "List_of_testing_videos.txt",
        "1 YouTube-real/00001.mp4\n0 Celeb-synthesis/id1_id0_0000.mp4\n",
    );
    let m = manifest::load(&data(root)).unwrap();
    assert_eq!(m.layout, FoundLayout::CelebDf);
    assert_eq!(m.entries.len(), 5);
    assert_eq!(find(&m.entries, "00001.mp4").split, Split::Test);
    assert_eq!(find(&m.entries, "id1_id0_0000.mp4").split, Split::Test);
    assert_eq!(find(&m.entries, "id0_id1_0000.mp4").label, Label::Fake);
    let unlisted: Vec<_> = m
        .entries
        .iter()
        .filter(|e| e.path.file_name().unwrap().to_string_lossy().starts_with("id0_"))
        .collect();
    assert_eq!(unlisted.len(), 2);
    assert!(unlisted.iter().all(|e| e.split != Split::Test), "only listed videos may be test");
    assert_eq!(unlisted[0].group, "id0");

    write(root, "List_of_testing_videos.txt", "1 Celeb-synthesis/id1_id0_0000.mp4\n");
    let err = manifest::load(&data(root)).unwrap_err().to_string();
    assert!(err.contains("listed as Real but lies in Celeb-synthesis"), "{err}");
    write(root, "List_of_testing_videos.txt", "2 YouTube-real/00001.mp4\n");
    let err = manifest::load(&data(root)).unwrap_err().to_string();
    assert!(err.contains("List_of_testing_videos.txt: line 1: label \"2\""), "{err}");
}

#[test]
fn dfdc_groups_fakes_with_their_original_across_nesting() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut meta = String::from("{");
    for i in 0..40 {
        meta += &format!(
            "\"r{i}.mp4\": {{\"label\": \"REAL\"}}, \"f{i}.mp4\": {{\"label\": \"FAKE\", \"original\": \"r{i}.mp4\"}},"
        );
    }
    meta.pop();
    meta += "}";
    write(root, "dfdc_train_part_0/metadata.json", &meta);
    write(
        root,
        "dfdc_train_part_1/dfdc_train_part_1/metadata.json",
        r#"{"a.mp4": {"label": "FAKE", "original": "b.mp4"}, "b.mp4": {"label": "REAL", "original": null}}"#,
    );
    let m = manifest::load(&data(root)).unwrap();
    assert_eq!(m.layout, FoundLayout::Dfdc);
    assert_eq!(m.entries.len(), 82);
    for i in 0..40 {
        let (r, f) = (find(&m.entries, &format!("r{i}.mp4")), find(&m.entries, &format!("f{i}.mp4")));
        assert_eq!((r.split, r.label, f.label), (f.split, Label::Real, Label::Fake), "pair {i} split apart");
    }
    assert!(find(&m.entries, "a.mp4").path.ends_with("dfdc_train_part_1/dfdc_train_part_1/a.mp4"));
    let counts = m.counts();
    assert!(counts[&Split::Train].real > counts[&Split::Test].real, "about 80% of groups train: {counts:?}");
}

#[test]
fn csv_manifest_with_header_labels_and_splits() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "manifest.csv",
        "path,label,split,group\nclips/a.mp4,real,train,g1\nclips/b.mp4,1,test,g1\nclips/c.mp4,FAKE,,g2\n",
    );
    let m = manifest::load(&data(dir.path())).unwrap();
    assert_eq!(m.layout, FoundLayout::Csv);
    assert_eq!(m.entries[0].path, dir.path().join("clips/a.mp4"), "paths are relative to the CSV");
    assert_eq!((m.entries[1].label, m.entries[1].split), (Label::Fake, Split::Test));
    assert_eq!(m.entries[2].group, "g2");

    write(dir.path(), "manifest.csv", "a.mp4,real\nb.mp4,maybe\n");
    let err = manifest::load(&data(dir.path())).unwrap_err().to_string();
    assert!(err.contains("manifest.csv: line 2: label \"maybe\": expected 0/real or 1/fake"), "{err}");
}

#[test]
fn frame_folders_with_and_without_split_folders() {
    let dir = tempfile::tempdir().unwrap();
    touch(dir.path(), "real/v1/0001.jpg");
    touch(dir.path(), "fake/v2/0001.jpg");
    let m = manifest::load(&data(dir.path())).unwrap();
    assert_eq!(m.layout, FoundLayout::Frames);
    assert_eq!(m.entries.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    touch(dir.path(), "train/real/v1/0001.jpg");
    touch(dir.path(), "val/fake/v2/0001.jpg");
    let m = manifest::load(&data(dir.path())).unwrap();
    assert_eq!(find(&m.entries, "v2").split, Split::Val);
}

#[test]
fn an_unknown_tree_says_which_layouts_were_expected() {
    let dir = tempfile::tempdir().unwrap();
    touch(dir.path(), "random/stuff.txt");
    let err = manifest::load(&data(dir.path())).unwrap_err();
    assert!(matches!(err, ManifestError::Unrecognised { .. }));
    let text = err.to_string();
    for layout in ["FaceForensics++", "Celeb-DF v2", "DFDC", "CSV manifest", "frames"] {
        assert!(text.contains(layout), "{text}");
    }
    let gone =
        DataConfig { root: "/no/such/dataset".into(), layout: DatasetLayout::Csv, ..DataConfig::default() };
    assert!(
        manifest::load(&gone).unwrap_err().to_string().contains("/no/such/dataset: no such file or folder")
    );
}

#[test]
fn prepare_list_prints_counts_and_json() {
    let dir = tempfile::tempdir().unwrap();
    faceforensics(dir.path());
    let cfg: PathBuf = dir.path().join("ff.toml");
    std::fs::write(&cfg, format!("[data]\nroot = {:?}\n", dir.path().display().to_string())).unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dfengine"))
            .args(["prepare", cfg.to_str().unwrap(), "--list"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(&[]);
    assert!(text.contains("FaceForensics++ layout, 12 videos"), "{text}");
    assert!(
        text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["train", "2", "4", "6"]),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(v["layout"], "faceforensics");
    assert_eq!(v["splits"]["test"]["fake"], 4);
}
