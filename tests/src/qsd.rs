//! A live "hypervisor host" for tests: `qemu-storage-daemon` over qcow2 files, QMP and NBD
//! on unix sockets only, a writable NBD export per disk playing the guest; and a tiny
//! synchronous QMP client to look at what Bora leaves behind on it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::tool;

/// One disk of a [`Qsd`]: qcow2 `image` as format node `node` (file node `<node>-file`),
/// exported writable over NBD as `export` if given.
#[derive(Clone, Debug)]
pub struct QsdDisk {
    pub node: String,
    pub image: PathBuf,
    pub export: Option<String>,
}

impl QsdDisk {
    pub fn new(node: &str, image: &Path, export: Option<&str>) -> QsdDisk {
        QsdDisk {
            node: node.to_string(),
            image: image.to_path_buf(),
            export: export.map(str::to_string),
        }
    }
}

/// A running `qemu-storage-daemon`; killed (SIGKILL) and reaped on drop.
pub struct Qsd {
    child: Option<Child>,
    /// The QMP socket: the VM is named by its file stem.
    pub qmp: PathBuf,
    /// The NBD server's unix socket.
    pub nbd: PathBuf,
    pub disks: Vec<QsdDisk>,
    log: PathBuf,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

impl Qsd {
    /// Starts the daemon with QMP at `qmp`, its NBD server at `nbd`, and `disks`.
    pub fn start(qmp: &Path, nbd: &Path, disks: &[QsdDisk]) -> Qsd {
        let mut q = Qsd {
            child: None,
            qmp: qmp.to_path_buf(),
            nbd: nbd.to_path_buf(),
            disks: disks.to_vec(),
            log: qmp.with_extension("qsd.log"),
        };
        q.spawn();
        q
    }

    /// The usual one-disk host: node `disk0` over `image`, exported as `live`.
    pub fn one_disk(qmp: &Path, nbd: &Path, image: &Path) -> Qsd {
        Qsd::start(qmp, nbd, &[QsdDisk::new("disk0", image, Some("live"))])
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "qemu-storage-daemon already running");
        // Stale sockets of a killed daemon would look ready.
        let _ = std::fs::remove_file(&self.qmp);
        let _ = std::fs::remove_file(&self.nbd);
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--chardev")
            .arg(format!(
                "socket,id=qmp0,path={},server=on,wait=off",
                s(&self.qmp)
            ))
            .args(["--monitor", "chardev=qmp0"]);
        for d in &self.disks {
            cmd.arg("--blockdev").arg(format!(
                "driver=file,node-name={}-file,filename={}",
                d.node,
                s(&d.image)
            ));
            cmd.arg("--blockdev")
                .arg(format!("driver=qcow2,node-name={0},file={0}-file", d.node));
        }
        cmd.arg("--nbd-server").arg(format!(
            "addr.type=unix,addr.path={},max-connections=16",
            s(&self.nbd)
        ));
        for d in &self.disks {
            if let Some(e) = &d.export {
                cmd.arg("--export").arg(format!(
                    "type=nbd,id=ex-{e},node-name={},name={e},writable=on",
                    d.node
                ));
            }
        }
        let log = std::fs::File::create(&self.log).expect("qsd log file");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot run qemu-storage-daemon (install qemu-utils)");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.nbd.exists() && UnixStream::connect(&self.qmp).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "qemu-storage-daemon exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not create its sockets"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }

    /// Starts it again on the same files after [`Qsd::quit`] or [`Qsd::kill`].
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// A clean shutdown (QMP `quit`): persistent bitmaps are written into the images.
    pub fn quit(&mut self) {
        assert!(self.child.is_some(), "qemu-storage-daemon not running");
        let _ = self.qmp("quit", Value::Null);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("qemu-storage-daemon did not quit");
                }
            }
        }
    }

    /// SIGKILL: nothing is saved (a host crash, as far as the images can tell).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The VM's name: the QMP socket's file stem.
    pub fn vm(&self) -> String {
        self.qmp
            .file_stem()
            .expect("qmp socket name")
            .to_string_lossy()
            .into_owned()
    }

    /// `nbd+unix:///EXPORT?socket=...` on this daemon's NBD server.
    pub fn url(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", s(&self.nbd))
    }

    /// Runs one QMP command: `Ok(return)` or `Err(error)`.
    pub fn qmp(&self, command: &str, arguments: Value) -> Result<Value, Value> {
        qmp(&self.qmp, command, arguments)
    }

    /// Runs one QMP command that must succeed.
    pub fn qmp_ok(&self, command: &str, arguments: Value) -> Value {
        self.qmp(command, arguments)
            .unwrap_or_else(|e| panic!("QMP {command} failed: {e}"))
    }

    /// `query-named-block-nodes` entry of `node`.
    pub fn node(&self, node: &str) -> Value {
        let nodes = self.qmp_ok("query-named-block-nodes", json!({"flat": true}));
        nodes
            .as_array()
            .expect("node list")
            .iter()
            .find(|n| n["node-name"] == node)
            .cloned()
            .unwrap_or_else(|| panic!("no node {node} in {nodes}"))
    }

    /// The dirty bitmaps on `node` (`BlockDirtyInfo` objects: name, recording, ...).
    pub fn bitmaps(&self, node: &str) -> Vec<Value> {
        self.node(node)["dirty-bitmaps"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Bora's bitmaps (`bora-*`) on `node`.
    pub fn bora_bitmaps(&self, node: &str) -> Vec<Value> {
        self.bitmaps(node)
            .into_iter()
            .filter(|b| b["name"].as_str().is_some_and(|n| n.starts_with("bora-")))
            .collect()
    }

    /// What a backup may leave behind on the daemon: `bora-*` exports and jobs, `bora-fl-*`
    /// nodes, each as "kind name".
    pub fn bora_leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let named = |v: &Value, key: &str, prefix: &str, kind: &str, out: &mut Vec<String>| {
            for x in v.as_array().expect("a list") {
                if let Some(id) = x[key].as_str()
                    && id.starts_with(prefix)
                {
                    out.push(format!("{kind} {id}"));
                }
            }
        };
        let exports = self.qmp_ok("query-block-exports", Value::Null);
        named(&exports, "id", "bora-", "export", &mut out);
        let jobs = self.qmp_ok("query-jobs", Value::Null);
        named(&jobs, "id", "bora-", "job", &mut out);
        let nodes = self.qmp_ok("query-named-block-nodes", json!({"flat": true}));
        named(&nodes, "node-name", "bora-fl-", "node", &mut out);
        out
    }

    /// Asserts nothing of a backup is left, and exactly one `bora-*` bitmap is on each disk,
    /// recording; returns their names in disk order.
    pub fn assert_clean(&self) -> Vec<String> {
        let left = self.bora_leftovers();
        assert!(left.is_empty(), "left behind on {}: {left:?}", self.vm());
        self.disks
            .iter()
            .map(|d| {
                let b = self.bora_bitmaps(&d.node);
                assert_eq!(b.len(), 1, "bora bitmaps on {}: {b:?}", d.node);
                assert_eq!(b[0]["recording"], true, "{b:?}");
                b[0]["name"].as_str().unwrap().to_string()
            })
            .collect()
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One QMP command on the monitor socket `sock` (a fresh connection: greeting,
/// `qmp_capabilities`, the command). Events are skipped.
pub fn qmp(sock: &Path, command: &str, arguments: Value) -> Result<Value, Value> {
    let stream = UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect to QMP {}: {e}", sock.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("QMP greeting");
    assert!(line.contains("\"QMP\""), "not a QMP greeting: {line}");
    let mut call = |cmd: &str, args: &Value| -> Result<Value, Value> {
        let mut req = json!({ "execute": cmd });
        if !args.is_null() {
            req["arguments"] = args.clone();
        }
        writeln!(writer, "{req}").expect("QMP write");
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("QMP read");
            if n == 0 {
                // `quit` may close the connection before answering.
                return Ok(Value::Null);
            }
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}"));
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e.clone());
            }
        }
    };
    call("qmp_capabilities", &Value::Null).expect("qmp_capabilities");
    call(command, &arguments)
}

/// A qcow2 image of `size` bytes with `writes` done by `qemu-io` (commands such as
/// `write -P 0x11 0 1M`), before any daemon opens it.
pub fn qcow2_with(path: &Path, size: &str, writes: &[String]) {
    tool("qemu-img", &["create", "-q", "-f", "qcow2", s(path), size]);
    if !writes.is_empty() {
        let mut args = vec!["-t", "writeback", "-f", "qcow2"];
        for w in writes {
            args.push("-c");
            args.push(w);
        }
        args.push(s(path));
        tool("qemu-io", &args);
    }
}

/// The guest writes: `qemu-io` commands on the NBD export `url`, then a flush.
pub fn guest(url: &str, commands: &[String]) {
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.extend(["-c", "flush", url]);
    tool("qemu-io", &args);
}

/// A raw copy of the NBD export `url` as it is now (nothing may write meanwhile).
pub fn copy_export(url: &str, to: &Path) {
    tool(
        "qemu-img",
        &["convert", "-U", "-f", "raw", "-O", "raw", url, s(to)],
    );
}

/// The `len` bytes at `offset` of the NBD export `url`, read once (`qemu-io read -v`).
pub fn read_export(url: &str, offset: u64, len: u64) -> Vec<u8> {
    let cmd = format!("read -v {offset} {len}");
    let out = tool("qemu-io", &["-r", "-f", "raw", "-c", &cmd, url]);
    // Lines like "00001000:  2a 2a ... 2a  ****************".
    let text = String::from_utf8_lossy(&out.stdout);
    let mut bytes = Vec::with_capacity(len as usize);
    for line in text.lines() {
        let Some((addr, rest)) = line.split_once(':') else {
            continue;
        };
        if addr.len() != 8 || !addr.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        for h in rest.split_whitespace().take(16) {
            match u8::from_str_radix(h, 16) {
                Ok(b) if h.len() == 2 => bytes.push(b),
                _ => break,
            }
        }
    }
    assert_eq!(bytes.len() as u64, len, "qemu-io read -v output: {text}");
    bytes
}
