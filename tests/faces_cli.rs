//! `dfengine faces` from the command line: on the astronaut photograph (decoded through
//! FFmpeg's PNG decoder) the JSON holds one face whose box is the NumPy reference's
//! (tests/fixtures/mtcnn_astronaut.json, case "full"), `--draw` writes a PNG, and a
//! missing file is reported by name without stopping the others; a relative
//! `face_detector` in a config file is read from the file's folder and the default from
//! the checkout's `models/`, whatever the working directory. Needs
//! `models/mtcnn.safetensors` and `models/astronaut.png` (scripts/get-face-detector.sh
//! --test-image); without them the test prints why it skips.

use std::process::{Command, Output};

fn dfengine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dfengine")).args(args).output().expect("run dfengine")
}

#[cfg(feature = "video")]
fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[cfg(feature = "video")]
#[test]
fn faces_reports_the_astronaut_draws_it_and_names_a_missing_file() {
    let (weights, photo) = (repo("models/mtcnn.safetensors"), repo("models/astronaut.png"));
    for p in [&weights, &photo] {
        if !p.exists() {
            println!("skipped: {} missing (run scripts/get-face-detector.sh --test-image)", p.display());
            return;
        }
    }
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("tests/fixtures/mtcnn_astronaut.json")).unwrap())
            .unwrap();
    let full = fixture["cases"].as_array().unwrap().iter().find(|c| c["name"] == "full").unwrap();
    let corners: Vec<f64> =
        full["faces"][0]["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let want = [corners[0], corners[1], corners[2] - corners[0], corners[3] - corners[1]];

    let dir = tempfile::tempdir().unwrap();
    let drawn = dir.path().join("drawn");
    let missing = dir.path().join("nowhere.mp4");
    let detector = format!("data.face_detector={}", weights.display());
    let out = dfengine(&[
        "faces",
        photo.to_str().unwrap(),
        missing.to_str().unwrap(),
        "--json",
        "--draw",
        drawn.to_str().unwrap(),
        "--set",
        &detector,
    ]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "one file missing: exit 1; stderr: {stderr}");
    assert!(stderr.contains("1 of 2 files could not be read"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    let files = report.as_array().expect("one object per file");
    assert_eq!(files.len(), 2, "{stdout}");

    assert_eq!(files[0]["path"], photo.to_str().unwrap());
    let frames = files[0]["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 1, "a still image is one frame: {stdout}");
    assert_eq!(frames[0]["index"], 0);
    let faces = frames[0]["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1, "one face: {stdout}");
    let got: Vec<f64> = faces[0]["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for k in 0..4 {
        assert!((got[k] - want[k]).abs() <= 1.0, "box [x, y, w, h] {got:?}, reference {want:?}");
    }
    assert!(faces[0]["score"].as_f64().unwrap() > 0.99);
    assert_eq!(faces[0]["landmarks"].as_array().unwrap().len(), 5);

    assert_eq!(files[1]["path"], missing.to_str().unwrap());
    let error = files[1]["error"].as_str().expect("the missing file has an error");
    assert!(error.contains("No such file"), "{error}");

    let png = std::fs::read(drawn.join("astronaut_frame0.png")).expect("--draw wrote the frame");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");

    // Without --json the missing file is named on its line.
    let out = dfengine(&["faces", missing.to_str().unwrap(), "--set", &detector]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains(&format!("{}: error:", missing.display())), "{stdout}");
}

#[test]
fn faces_without_weights_names_them_and_the_script() {
    let out = dfengine(&["faces", "clip.mp4", "--set", "data.face_detector=/nowhere/mtcnn.safetensors"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    if cfg!(feature = "video") {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("/nowhere/mtcnn.safetensors") && stderr.contains("scripts/get-face-detector.sh"),
            "{stderr}"
        );
    } else {
        assert!(stderr.contains("without the `video` feature"), "{stderr}");
    }
}

#[cfg(feature = "video")]
#[test]
fn face_detector_is_read_from_the_config_files_folder_and_the_default_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(conf.join("weights")).unwrap();
    std::fs::write(conf.join("c.toml"), "[data]\nface_detector = \"weights/mtcnn.safetensors\"\n").unwrap();
    // Run from the folder above the config's: the path is still the config folder's.
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dfengine")).current_dir(dir.path()).args(args).output().unwrap()
    };
    let out = run(&["faces", "x.png", "--config", "conf/c.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("[data] face_detector: /")
            && stderr.contains("conf/weights/mtcnn.safetensors: no such file")
            && stderr.contains("scripts/get-face-detector.sh"),
        "the key, the resolved path and the script: {stderr}"
    );

    let (weights, photo) = (repo("models/mtcnn.safetensors"), repo("models/astronaut.png"));
    if !weights.exists() || !photo.exists() {
        println!("skipped the found cases: run scripts/get-face-detector.sh --test-image");
        return;
    }
    std::fs::copy(&weights, conf.join("weights/mtcnn.safetensors")).unwrap();
    let photo = photo.to_str().unwrap();
    for args in [&["faces", photo, "--config", "conf/c.toml", "--json"][..], &["faces", photo, "--json"]] {
        let out = run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report[0]["frames"][0]["faces"].as_array().map(Vec::len), Some(1), "{args:?}: {stdout}");
    }
}
