//! `edgesite image busybox`: the OCI tarball an air-gapped site drops into a node's images
//! directory, written whole or not at all.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Result, ensure};

fn edgesite(args: &[&str], out: &Path) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_edgesite"))
        .args(["image", "busybox"])
        .args(args)
        .arg("--output")
        .arg(out)
        .env("RUST_BACKTRACE", "0")
        .output()?)
}

fn tar_member(tarball: &Path, member: &str) -> Result<String> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(tarball)
        .arg(member)
        .output()?;
    ensure!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn busybox_image_is_an_oci_layout_named_as_asked() -> Result<()> {
    ensure!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is missing: install the Debian package `busybox-static` (run `scripts/setup`)"
    );
    let dir = tempfile::tempdir()?;
    let tarball = dir.path().join("bb.oci.tar");
    let out = edgesite(&["--name", "example.org/tools/busybox:2"], &tarball)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value = serde_json::from_str(&tar_member(&tarball, "index.json")?)?;
    let annotations = &index["manifests"][0]["annotations"];
    assert_eq!(
        annotations["io.containerd.image.name"], "example.org/tools/busybox:2",
        "{index}"
    );
    let layout = tar_member(&tarball, "oci-layout")?;
    assert!(layout.contains("imageLayoutVersion"), "{layout}");
    // Nothing but the tarball is left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(names, vec![std::ffi::OsString::from("bb.oci.tar")]);
    Ok(())
}

#[test]
fn a_directory_or_a_missing_busybox_is_refused_leaving_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = edgesite(&[], dir.path())?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a directory"), "{err}");

    let tarball = dir.path().join("bb.tar");
    let out = edgesite(&["--busybox", "/nonexistent/busybox"], &tarball)?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busybox-static"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0, "nothing written");
    Ok(())
}
