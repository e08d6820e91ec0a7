//! `bora serve`: an NBD server over a snapshot, judged by real QEMU tools (`qemu-img
//! compare/convert/map`, `qemu-io`) on 127.0.0.1 and unix sockets, plus hostile clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use bora_tests::*;

const MIB: u64 = 1 << 20;

/// 64 MiB: random data, text, allocated zeros (stored as holes), and unwritten space.
fn mixed_writes() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, noise(3 * MIB as usize, 11)),
        (10 * MIB + 4096, b"serve me\n".repeat(100_000)),
        (20 * MIB, vec![0u8; 2 * MIB as usize]),
        (33 * MIB - 100, noise(200, 12)),
        (64 * MIB - 4096, noise(4096, 13)),
    ]
}

struct Served {
    child: Child,
    url: String,
    stderr: std::path::PathBuf,
}

/// Starts `bora serve ARGS` and waits for its URL line.
fn serve(env: &Env, args: &[&str]) -> Served {
    let stderr = env.path(&format!(
        "serve-{}.stderr",
        args.join("_").replace('/', "_")
    ));
    let mut child = Command::new(bora_bin())
        .arg("--repo")
        .arg(env.repo())
        .arg("serve")
        .args(args)
        .env_remove("BORA_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("run bora serve");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the url line");
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    let url = line
        .trim()
        .strip_prefix("serving ")
        .unwrap_or_else(|| panic!("no url line (stdout {line:?}, stderr {err})"))
        .to_string();
    Served { child, url, stderr }
}

/// SIGTERM, then the server must exit 0 within 10 s without a panic.
fn stop(mut s: Served) {
    let pid = s.child.id().to_string();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let started = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().expect("wait") {
            break st;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = s.child.kill();
            panic!("bora serve did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&s.stderr).unwrap_or_default();
    assert!(!err.contains("panicked"), "bora serve panicked: {err}");
    assert_eq!(status.code(), Some(0), "bora serve failed: {err}");
}

fn backup(env: &Env, img: &Path, vm: &str) -> String {
    let r = env.json(&["backup", "--image", img.to_str().unwrap(), "--vm", vm]);
    r["snapshot"].as_str().expect("snapshot id").to_string()
}

/// `qemu-img map` entry covering `offset`.
fn map_at(map: &[Value], offset: u64) -> &Value {
    map.iter()
        .find(|e| u(e, "start") <= offset && offset < u(e, "start") + u(e, "length"))
        .unwrap_or_else(|| panic!("offset {offset} not in the map"))
}

#[test]
fn serve_gives_qemu_the_snapshot_bit_exact_with_holes() {
    let env = Env::new();
    let img = env.path("vm.raw");
    raw_image(&img, 64 * MIB, &mixed_writes());
    backup(&env, &img, "web");
    let s = serve(
        &env,
        &[
            "latest",
            "--vm",
            "web",
            "--disk",
            "vm",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(s.url.starts_with("nbd://127.0.0.1:"), "{}", s.url);
    assert!(s.url.ends_with("/vm"), "{}", s.url);

    assert!(raw_identical(&img, &s.url));

    // Two clients at once.
    let a = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&img)
        .arg(&s.url)
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-img");
    let b = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&img)
        .arg(&s.url)
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-img");
    for c in [a, b] {
        let out = c.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "concurrent compare differed");
    }

    let q = env.path("out.qcow2");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &s.url,
            q.to_str().unwrap(),
        ],
    );
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&img)
        .arg(&q)
        .output()
        .expect("qemu-img");
    assert_eq!(out.status.code(), Some(0), "converted copy differs");
    // Holes stay holes in the copy: only the data chunks were allocated.
    let info: Value = serde_json::from_slice(
        &tool("qemu-img", &["info", "--output=json", q.to_str().unwrap()]).stdout,
    )
    .expect("json");
    assert!(u(&info, "actual-size") < 16 * MIB, "{info}");

    let map: Value = serde_json::from_slice(
        &tool("qemu-img", &["map", "--output=json", "-f", "raw", &s.url]).stdout,
    )
    .expect("map json");
    let map = map.as_array().expect("array");
    for data_at in [0, 10 * MIB + 8192, 33 * MIB - 50, 64 * MIB - 1] {
        assert_eq!(map_at(map, data_at)["data"], true, "at {data_at}: {map:?}");
    }
    for hole_at in [5 * MIB, 21 * MIB, 40 * MIB] {
        let e = map_at(map, hole_at);
        assert_eq!(e["data"], false, "at {hole_at}: {e}");
        assert_eq!(e["zero"], true, "at {hole_at}: {e}");
    }
    stop(s);
}

#[test]
fn serve_an_older_snapshot_on_a_unix_socket() {
    let env = Env::new();
    let img = env.path("db.raw");
    raw_image(&img, 64 * MIB, &mixed_writes());
    let first = backup(&env, &img, "db");
    let v1 = env.path("v1.raw");
    std::fs::copy(&img, &v1).expect("copy");
    raw_image(&img, 64 * MIB, &[(MIB, noise(4 * MIB as usize, 99))]);
    backup(&env, &img, "db");

    let sock = env.path("nbd.sock");
    let listen = format!("unix:{}", sock.display());
    let s = serve(
        &env,
        &[
            &first, "--vm", "db", "--disk", "db", "--listen", &listen, "--name", "old",
        ],
    );
    assert_eq!(s.url, format!("nbd+unix:///old?socket={}", sock.display()));
    assert!(
        raw_identical(&v1, &s.url),
        "the older snapshot serves the older bytes"
    );
    assert!(!raw_identical(&img, &s.url));
    stop(s);
    assert!(!sock.exists(), "the socket is removed at shutdown");
}

/// Greeting, flags (fixed newstyle, no zeroes), NBD_OPT_EXPORT_NAME; returns the size.
fn handshake(c: &mut TcpStream, export: &str) -> u64 {
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    let mut b = Vec::new();
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(b"IHAVEOPT");
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&(export.len() as u32).to_be_bytes());
    b.extend_from_slice(export.as_bytes());
    c.write_all(&b).expect("option");
    let mut info = [0u8; 10];
    c.read_exact(&mut info).expect("export info");
    u64::from_be_bytes(info[..8].try_into().expect("8 bytes"))
}

fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

/// A simple reply: (errno, cookie).
fn reply(c: &mut TcpStream) -> (u32, u64) {
    let mut r = [0u8; 16];
    c.read_exact(&mut r).expect("reply");
    assert_eq!(&r[..4], &0x6744_6698u32.to_be_bytes());
    (
        u32::from_be_bytes(r[4..8].try_into().expect("4")),
        u64::from_be_bytes(r[8..16].try_into().expect("8")),
    )
}

#[test]
fn read_only_export_refuses_writes_and_survives_hostile_clients() {
    let env = Env::new();
    let img = env.path("vm.raw");
    raw_image(&img, 64 * MIB, &mixed_writes());
    backup(&env, &img, "web");
    let s = serve(
        &env,
        &[
            "latest",
            "--vm",
            "web",
            "--disk",
            "vm",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let hostport = s
        .url
        .strip_prefix("nbd://")
        .and_then(|r| r.split('/').next())
        .expect("host:port")
        .to_string();

    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &s.url])
        .output()
        .expect("qemu-io");
    assert!(
        !out.status.success(),
        "a write to a read-only export succeeded"
    );

    // Garbage instead of a handshake.
    let mut g = TcpStream::connect(&hostport).expect("connect");
    g.write_all(b"GET / HTTP/1.1\r\nHost: nbd\r\n\r\n")
        .expect("garbage");
    let mut sink = Vec::new();
    g.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = g.read_to_end(&mut sink);

    // A proper handshake, then requests with huge lengths and a write.
    let mut c = TcpStream::connect(&hostport).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(handshake(&mut c, "vm"), 64 * MIB);
    c.write_all(&request(0, 1, 0, u32::MAX)).expect("read req");
    assert_eq!(reply(&mut c), (75, 1), "EOVERFLOW for a 4 GiB read");
    c.write_all(&request(0, 2, 64 * MIB - 10, 4096))
        .expect("read req");
    assert_eq!(reply(&mut c), (22, 2), "EINVAL past the end");
    let mut w = request(1, 3, 0, 512);
    w.extend_from_slice(&[0xee; 512]);
    c.write_all(&w).expect("write req");
    assert_eq!(reply(&mut c), (1, 3), "EPERM for a write");
    c.write_all(&request(0, 4, 0, 16)).expect("read req");
    assert_eq!(reply(&mut c), (0, 4));
    let mut data = [0u8; 16];
    c.read_exact(&mut data).expect("data");
    assert_eq!(&data[..], &noise(16, 11)[..]);
    // A write whose payload is over the limit: the server hangs up on this client only.
    c.write_all(&request(1, 5, 0, u32::MAX)).expect("write req");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty());

    assert!(
        raw_identical(&img, &s.url),
        "the server still serves after hostile clients"
    );
    stop(s);
}

#[test]
fn writable_export_keeps_writes_in_an_overlay_and_the_snapshot_unchanged() {
    let env = Env::new();
    let img = env.path("vm.raw");
    raw_image(&img, 64 * MIB, &mixed_writes());
    backup(&env, &img, "web");
    let sock = env.path("rw.sock");
    let s = serve(
        &env,
        &[
            "latest",
            "--vm",
            "web",
            "--disk",
            "vm",
            "--listen",
            &format!("unix:{}", sock.display()),
            "--writable",
        ],
    );
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 1000 70000",
            "-c",
            "write -z 40M 1M",
            "-c",
            "write -P 0x6b 41M 4k",
            "-c",
            "read -P 0x5a 1000 70000",
            "-c",
            "flush",
            &s.url,
        ],
    );
    // Another connection sees the writes; the rest is still the snapshot.
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x5a 1000 70000",
            "-c",
            "read -P 0 40M 1M",
            "-c",
            "read -P 0x6b 41M 4k",
            &s.url,
        ],
    );
    assert!(!raw_identical(&img, &s.url));
    let mut want = std::fs::read(&img).expect("read image");
    want[1000..71_000].fill(0x5a);
    want[(41 * MIB) as usize..(41 * MIB + 4096) as usize].fill(0x6b);
    let expected = env.path("expected.raw");
    std::fs::write(&expected, &want).expect("write");
    assert!(raw_identical(&expected, &s.url));
    stop(s);

    let restored = env.path("restored.raw");
    env.ok(&[
        "restore",
        "latest",
        "--vm",
        "web",
        "--disk",
        "vm",
        "--to",
        restored.to_str().unwrap(),
    ]);
    assert!(images_identical(&img, &restored), "the snapshot changed");
}

/// `qemu-io` commands against `url`.
fn qemu_io(url: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(url);
    tool("qemu-io", &args);
}

#[test]
fn saved_overlay_survives_a_restart_and_copies_back_bit_exact() {
    let env = Env::new();
    let img = env.path("vm.raw");
    raw_image(&img, 64 * MIB, &mixed_writes());
    let snap = backup(&env, &img, "web");
    let overlay = env.path("overlay");
    let ov = overlay.to_str().unwrap();
    let sock = env.path("rw.sock");
    let listen = format!("unix:{}", sock.display());
    let args = [
        "latest",
        "--vm",
        "web",
        "--disk",
        "vm",
        "--listen",
        &listen,
        "--overlay",
        ov,
    ];

    // First session: writes over data, a hole, and zeros over data.
    let s = serve(&env, &args);
    qemu_io(
        &s.url,
        &[
            "write -P 0x5a 1000 70000",
            "write -z 10M 1M",
            "write -P 0x6b 41M 4k",
            "flush",
        ],
    );
    // While it is served the overlay is locked.
    let err = env.fails(&[
        "copy-back",
        "--overlay",
        ov,
        "--to",
        env.path("x.raw").to_str().unwrap(),
    ]);
    assert!(err.contains("in use"), "{err}");
    stop(s);

    // Second session resumes the overlay: the first session's writes are there.
    let s = serve(&env, &args);
    qemu_io(
        &s.url,
        &[
            "read -P 0x5a 1000 70000",
            "read -P 0 10M 1M",
            "write -P 0x7c 63M 1M",
            "flush",
        ],
    );
    stop(s);

    let mut want = std::fs::read(&img).expect("read image");
    want[1000..71_000].fill(0x5a);
    want[(10 * MIB) as usize..(11 * MIB) as usize].fill(0);
    want[(41 * MIB) as usize..(41 * MIB + 4096) as usize].fill(0x6b);
    want[(63 * MIB) as usize..(64 * MIB) as usize].fill(0x7c);
    let expected = env.path("expected.raw");
    std::fs::write(&expected, &want).expect("write");

    // Copy-back to a raw file, a qcow2 file and a live NBD export holding other data.
    let raw = env.path("back.raw");
    let r = env.json(&["copy-back", "--overlay", ov, "--to", raw.to_str().unwrap()]);
    assert_eq!(r["snapshot"], snap.as_str());
    assert_eq!(r["vm"], "web");
    assert!(u(&r, "overlay_bytes") >= 70_000 + MIB + 4096 + MIB, "{r}");
    assert!(
        images_identical(&expected, &raw),
        "copy-back to raw differs"
    );
    let qcow = env.path("back.qcow2");
    env.ok(&["copy-back", "--overlay", ov, "--to", qcow.to_str().unwrap()]);
    assert!(
        images_identical(&expected, &qcow),
        "copy-back to qcow2 differs"
    );
    let host_img = env.path("host.qcow2");
    let dirty = env.path("dirty.raw");
    raw_image(&dirty, 64 * MIB, &[(0, noise(64 * MIB as usize, 99))]);
    qcow2_from_raw(&dirty, &host_img);
    let nbd_sock = env.path("host.sock");
    let mut qn = qemu_nbd_writable(&host_img, "disk0", &nbd_sock);
    let url = format!("nbd+unix:///disk0?socket={}", nbd_sock.display());
    env.ok(&["copy-back", "--overlay", ov, "--to", &url]);
    qn.wait().expect("qemu-nbd exits after its client");
    assert!(
        images_identical(&expected, &host_img),
        "copy-back to NBD differs"
    );

    // The overlay belongs to that snapshot disk: another is refused, nothing changes.
    let other = env.path("other.raw");
    raw_image(&other, 64 * MIB, &[(0, noise(4096, 5))]);
    backup(&env, &other, "db");
    let out = env.run(&[
        "serve",
        "latest",
        "--vm",
        "db",
        "--disk",
        "other",
        "--listen",
        &listen,
        "--overlay",
        ov,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("was written over vm web"),
        "{err}"
    );
    assert!(!env.path("nowhere").exists());
    let err = env.fails(&[
        "copy-back",
        "--overlay",
        env.path("nowhere").to_str().unwrap(),
        "--to",
        env.path("y.raw").to_str().unwrap(),
    ]);
    assert!(err.contains("no such overlay"), "{err}");
    assert!(!env.path("y.raw").exists());
    env.ok(&[
        "copy-back",
        "--overlay",
        ov,
        "--to",
        raw.to_str().unwrap(),
        "--force",
    ]);
    assert!(images_identical(&expected, &raw));
}

#[test]
fn serve_prints_json_and_refuses_bad_listen_addresses() {
    let env = Env::new();
    let img = env.path("vm.raw");
    raw_image(&img, 8 * MIB, &[(0, noise(MIB as usize, 5))]);
    backup(&env, &img, "web");
    let err = env.fails(&[
        "serve", "latest", "--vm", "web", "--disk", "vm", "--listen", "nowhere",
    ]);
    assert!(err.contains("HOST:PORT"), "{err}");
    let err = env.fails(&[
        "serve",
        "latest",
        "--vm",
        "web",
        "--disk",
        "nope",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("no disk"), "{err}");

    let mut child = Command::new(bora_bin())
        .arg("--repo")
        .arg(env.repo())
        .args([
            "--json",
            "serve",
            "latest",
            "--vm",
            "web",
            "--disk",
            "vm",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    let v: Value = serde_json::from_str(&line).expect("one JSON line");
    assert_eq!(v["export"], "vm");
    assert_eq!(u(&v, "size"), 8 * MIB);
    let url = v["url"].as_str().expect("url").to_string();
    assert!(raw_identical(&img, &url));
    stop(Served {
        child,
        url,
        stderr: env.path("none"),
    });
}
