//! The integration harness: runs the real `bora` binary against real files and real QEMU
//! tools (`qemu-img`, `qemu-io`, `qemu-nbd`), each test in its own temporary repository.

pub mod qsd;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Where the `bora` binary is: `BORA_BIN`, else next to this test binary's directory
/// (`target/<profile>/bora`; build it first: `cargo build --release -p bora-cli`).
pub fn bora_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BORA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("bora");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --release -p bora-cli` first or set BORA_BIN",
        bin.display()
    );
    bin
}

/// A scratch directory with a repository in it.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("bora-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// Runs `bora --repo REPO ARGS...`.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(bora_bin())
            .arg("--repo")
            .arg(self.repo())
            .args(args)
            .env_remove("BORA_LOG")
            .output()
            .expect("run bora");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "bora panicked: {stderr}"
        );
        out
    }

    /// Runs bora, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "bora {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs bora with `--json`, asserts success, parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let s = self.ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{s}"))
    }

    /// Runs bora, asserts failure with a one-line error, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "bora {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.starts_with("error: "), "unclear error: {stderr}");
        stderr
    }
}

/// Runs a tool, asserts success.
pub fn tool(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-img compare` exit code: 0 identical, 1 different.
pub fn images_identical(a: &Path, b: &Path) -> bool {
    qemu_compare(&[], a.as_os_str(), b.as_os_str())
}

/// `qemu-img compare -f raw -F raw IMAGE URL`, e.g. against an NBD export.
pub fn raw_identical(image: &Path, url: &str) -> bool {
    qemu_compare(&["-f", "raw", "-F", "raw"], image.as_os_str(), url.as_ref())
}

fn qemu_compare(opts: &[&str], a: &std::ffi::OsStr, b: &std::ffi::OsStr) -> bool {
    let out = Command::new("qemu-img")
        .arg("compare")
        .args(opts)
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "qemu-img compare failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Deterministic pseudo-random bytes (xorshift64).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A sparse raw image of `size` bytes with `writes` (offset, data) in it.
pub fn raw_image(path: &Path, size: u64, writes: &[(u64, Vec<u8>)]) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("set_len");
    for (off, data) in writes {
        f.write_all_at(data, *off).expect("write");
    }
    f.sync_all().expect("sync");
}

/// A qcow2 image holding the same data as a raw one (through `qemu-img convert`).
pub fn qcow2_from_raw(raw: &Path, qcow2: &Path) {
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &raw.to_string_lossy(),
            &qcow2.to_string_lossy(),
        ],
    );
}

/// Bytes actually allocated on disk for a file.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").blocks() * 512
}

/// The first disk entry of a `backup --json` report.
pub fn disk0(report: &Value) -> &Value {
    &report["disks"][0]
}

/// `field` of a JSON object as u64.
pub fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {v}"))
}

/// Every `*.pack` file below `dir`.
pub fn pack_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(pack_files(&p));
        } else if p.extension().is_some_and(|x| x == "pack") {
            out.push(p);
        }
    }
    out
}

/// Pids of running processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Serves a qcow2 `image` writable as `export` with `qemu-nbd` on the unix socket `sock`
/// (no `-t`: it exits when its client disconnects) and waits for the socket.
pub fn qemu_nbd_writable(image: &Path, export: &str, sock: &Path) -> std::process::Child {
    let child = Command::new("qemu-nbd")
        .args(["-f", "qcow2", "-x", export, "-k"])
        .arg(sock)
        .arg(image)
        .spawn()
        .expect("run qemu-nbd");
    for _ in 0..400 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    child
}

/// Waits until `child` (a running `bora backup`) has written `packs` pack files under
/// `repo` beyond the `before` there were when it started — so it stored chunks but has not
/// committed — then SIGKILLs it. Two packs are uploaded at a time, so once the third
/// appears the first is indexed.
pub fn kill_after_packs(
    child: &mut std::process::Child,
    repo: &Path,
    before: usize,
    packs: usize,
    limit: std::time::Duration,
) {
    let started = std::time::Instant::now();
    while pack_files(repo).len() < before + packs {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "backup finished before it could be killed"
        );
        assert!(
            started.elapsed() < limit,
            "backup wrote no pack in {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
}
