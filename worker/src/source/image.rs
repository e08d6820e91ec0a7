//! Opening an image file as a backup source: QEMU's `qemu-img info` tells the format
//! (raw or qcow2) and the virtual size; raw is read directly, qcow2 through `qemu-nbd`.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tokio::process::Command;

use super::qemu_nbd::QemuNbdSource;
use super::raw::RawSource;
use super::{BlockSource, SourceError};

/// Image formats Bora reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            other => Err(format!("unsupported image format {other:?} (raw or qcow2)")),
        }
    }
}

#[derive(Deserialize)]
struct QemuImgInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
}

/// What `qemu-img info` says of an image.
#[derive(Clone, Copy, Debug)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub size: u64,
}

/// Probes `path` with `qemu-img info`. A missing, unreadable, truncated or corrupt image
/// is an error carrying QEMU's own explanation.
pub async fn probe(path: &Path) -> Result<ImageInfo, SourceError> {
    let name = path.display().to_string();
    let open_err = |reason: String| SourceError::Open {
        path: name.clone(),
        reason,
    };
    // Check access ourselves first: QEMU's message for a missing file is less direct.
    std::fs::File::open(path).map_err(|e| open_err(e.to_string()))?;
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "--force-share"])
        .arg(path)
        .output()
        .await
        .map_err(|e| open_err(format!("cannot run qemu-img (install qemu-utils): {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(open_err(format!("qemu-img info failed: {msg}")));
    }
    let info: QemuImgInfo = serde_json::from_slice(&out.stdout)
        .map_err(|e| open_err(format!("unexpected qemu-img info output: {e}")))?;
    let format = info.format.parse().map_err(open_err)?;
    Ok(ImageInfo {
        format,
        size: info.virtual_size,
    })
}

#[derive(Deserialize)]
struct QemuImgCheck {
    #[serde(default)]
    corruptions: u64,
    #[serde(default, rename = "check-errors")]
    check_errors: u64,
}

/// Checks a qcow2 image's metadata with `qemu-img check` (reads metadata only, so it is
/// fast). Needed because QEMU reads clusters that point past the end of a truncated file
/// as zeros: without the check a cut-short image would back up "successfully" with holes
/// where its data was. Leaked clusters are harmless and accepted.
pub async fn check_qcow2(path: &Path) -> Result<(), SourceError> {
    let name = path.display().to_string();
    let open_err = |reason: String| SourceError::Open {
        path: name.clone(),
        reason,
    };
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", "--force-share", "-f", "qcow2"])
        .arg(path)
        .output()
        .await
        .map_err(|e| open_err(format!("cannot run qemu-img (install qemu-utils): {e}")))?;
    let check: QemuImgCheck = serde_json::from_slice(&out.stdout).map_err(|_| {
        let msg = String::from_utf8_lossy(&out.stderr);
        let first = msg.lines().next().unwrap_or("no output").trim().to_string();
        open_err(format!("qemu-img check failed: {first}"))
    })?;
    if check.corruptions > 0 || check.check_errors > 0 {
        return Err(open_err(format!(
            "qcow2 image is corrupt or truncated ({} corruptions, {} check errors reported by qemu-img check); \
             repair a copy with `qemu-img check -r all` before backing it up",
            check.corruptions, check.check_errors
        )));
    }
    Ok(())
}

/// Opens an image file read-only as a backup source.
pub async fn open_image(path: &Path) -> Result<Arc<dyn BlockSource>, SourceError> {
    let info = probe(path).await?;
    Ok(match info.format {
        ImageFormat::Raw => Arc::new(RawSource::open(path)?),
        ImageFormat::Qcow2 => {
            check_qcow2(path).await?;
            Arc::new(QemuNbdSource::open(path, info.format).await?)
        }
    })
}
