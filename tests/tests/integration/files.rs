//! `bora files ls|get` over real disk images built without mounting anything: GPT (sgdisk)
//! and MBR (sfdisk) tables, FAT (mkfs.fat + mcopy), ext4 (mkfs.ext4 -d -E offset=) and NTFS
//! (mkntfs + ntfscp, dd into place). Needs gdisk, fdisk, dosfstools, mtools, e2fsprogs,
//! ntfs-3g.

use std::collections::BTreeMap;
use std::path::Path;

use bora_tests::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The tree put into each ext4 file system.
fn ext4_tree(dir: &Path, hostname: &str) {
    std::fs::create_dir_all(dir.join("etc/nested/deeper")).unwrap();
    std::fs::write(dir.join("etc/hostname"), hostname).unwrap();
    std::fs::write(dir.join("etc/nested/a.conf"), "a = 1\n").unwrap();
    std::fs::write(dir.join("etc/nested/deeper/b.txt"), "bee\n".repeat(1000)).unwrap();
    std::fs::write(dir.join("big.bin"), noise(5 * MIB as usize, 42)).unwrap();
    std::fs::write(dir.join("small.txt"), "small\n").unwrap();
    std::os::unix::fs::symlink("etc/hostname", dir.join("link")).unwrap();
}

/// The tree copied into each FAT file system.
fn fat_tree(dir: &Path, readme: &str) {
    std::fs::create_dir_all(dir.join("docs/sub")).unwrap();
    std::fs::write(dir.join("readme.txt"), readme).unwrap();
    std::fs::write(dir.join("docs/notes.txt"), "notes\n".repeat(500)).unwrap();
    std::fs::write(dir.join("docs/sub/deep.bin"), noise(70_000, 7)).unwrap();
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `(first, last)` sector of GPT partition `n` (from `sgdisk -i`).
fn gpt_extent(img: &Path, n: u32) -> (u64, u64) {
    let out = tool("sgdisk", &["-i", &n.to_string(), &s(img)]);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    (field("First sector: "), field("Last sector: "))
}

fn mkfs_fat(img: &Path, first: u64, sectors: u64, fat32: bool, src: &Path) {
    let mut args = vec![];
    if fat32 {
        args.extend(["-F", "32"]);
    }
    let off = first.to_string();
    let kib = (sectors / 2).to_string();
    args.extend(["--offset", &off, "-n", "BORAFAT"]);
    let img_s = s(img);
    args.push(&img_s);
    args.push(&kib);
    tool("mkfs.fat", &args);
    fat_put(img, first, src);
}

/// Copies the contents of `src` into the FAT at sector `first` (overwriting).
fn fat_put(img: &Path, first: u64, src: &Path) {
    let at = format!("{}@@{}", s(img), first * 512);
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        tool("mcopy", &["-o", "-i", &at, "-s", &s(&p), "::/"]);
    }
}

fn mkfs_ext4(img: &Path, first: u64, sectors: u64, src: &Path) {
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            &s(src),
            "-E",
            &format!("offset={}", first * 512),
            &s(img),
            &format!("{}k", sectors / 2),
        ],
    );
}

/// A 256 MiB GPT disk: 1 FAT32, 2 ext4, 3 NTFS.
fn gpt_disk(env: &Env) -> std::path::PathBuf {
    let img = env.path("gpt.raw");
    tool("truncate", &["-s", "256M", &s(&img)]);
    tool(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:2048:+64M",
            "-t",
            "1:EF00",
            "-n",
            "2:0:+96M",
            "-t",
            "2:8300",
            "-n",
            "3:0:0",
            "-t",
            "3:0700",
            &s(&img),
        ],
    );
    let (f1, l1) = gpt_extent(&img, 1);
    let fat = env.path("fat-src");
    fat_tree(&fat, "hello from FAT\n");
    mkfs_fat(&img, f1, l1 - f1 + 1, true, &fat);
    let (f2, l2) = gpt_extent(&img, 2);
    let ext = env.path("ext4-src");
    ext4_tree(&ext, "vm1\n");
    mkfs_ext4(&img, f2, l2 - f2 + 1, &ext);
    let (f3, l3) = gpt_extent(&img, 3);
    let part = env.path("ntfs.raw");
    tool(
        "truncate",
        &["-s", &((l3 - f3 + 1) * 512).to_string(), &s(&part)],
    );
    tool(
        "mkntfs",
        &[
            "-F",
            "-Q",
            "-q",
            "-p",
            &f3.to_string(),
            "-H",
            "255",
            "-S",
            "63",
            &s(&part),
        ],
    );
    let ntfs_file = env.path("ntfs-hello.txt");
    std::fs::write(&ntfs_file, "hello from NTFS\n".repeat(100)).unwrap();
    tool("ntfscp", &[&s(&part), &s(&ntfs_file), "/hello.txt"]);
    tool(
        "dd",
        &[
            &format!("if={}", s(&part)),
            &format!("of={}", s(&img)),
            "bs=1M",
            &format!("seek={}", f3 * 512),
            "oflag=seek_bytes",
            "conv=notrunc,sparse",
            "status=none",
        ],
    );
    img
}

/// name → (type, size) of a `files ls --json` array.
fn listing(v: &Value) -> BTreeMap<String, (String, u64)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|e| {
            assert!(
                e["mtime"].as_str().is_some_and(|t| t.ends_with('Z')),
                "mtime not RFC 3339 UTC: {e}"
            );
            (
                e["name"].as_str().unwrap().to_string(),
                (e["type"].as_str().unwrap().to_string(), u(e, "size")),
            )
        })
        .collect()
}

fn entry(kind: &str, size: u64) -> (String, u64) {
    (kind.to_string(), size)
}

fn backup(env: &Env, img: &Path) -> String {
    let r = env.json(&["backup", "--image", &s(img), "--vm", "vm1"]);
    r["snapshot"].as_str().unwrap().to_string()
}

/// Every regular file under `dir`, relative path → contents.
fn tree_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn files_gpt_disk_with_fat_ext4_and_ntfs() {
    let env = Env::new();
    let img = gpt_disk(&env);
    let snap = backup(&env, &img);
    let t = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["files", extra[0], &snap, "--vm", "vm1", "--disk", "gpt"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra[1..].iter().map(|x| x.to_string()));
        a
    };
    let json = |extra: &[&str]| {
        let a = t(extra);
        env.json(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let fails = |extra: &[&str]| {
        let a = t(extra);
        env.fails(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // ext4: root and a subdirectory.
    let root = listing(&json(&["ls", "--partition", "2"]));
    assert_eq!(root["big.bin"], entry("file", 5 * MIB));
    assert_eq!(root["small.txt"], entry("file", 6));
    assert_eq!(root["etc"], entry("dir", 0));
    assert_eq!(root["link"], entry("symlink", "etc/hostname".len() as u64));
    assert_eq!(root["lost+found"].0, "dir");
    let sub = listing(&json(&["ls", "/etc/nested", "--partition", "2"]));
    assert_eq!(
        sub,
        BTreeMap::from([
            ("a.conf".to_string(), entry("file", 6)),
            ("deeper".to_string(), entry("dir", 0)),
        ])
    );
    // ".." and empty components.
    let same = listing(&json(&["ls", "//etc/nested/deeper/..", "--partition", "2"]));
    assert_eq!(same, sub);

    // FAT32 and NTFS.
    let fat = listing(&json(&["ls", "--partition", "1"]));
    assert_eq!(fat["readme.txt"], entry("file", 15));
    assert_eq!(fat["docs"], entry("dir", 0));
    let fat_docs = listing(&json(&["ls", "/docs", "--partition", "1"]));
    assert_eq!(fat_docs["notes.txt"], entry("file", 3000));
    assert_eq!(fat_docs["sub"], entry("dir", 0));
    let ntfs = listing(&json(&["ls", "/", "--partition", "3"]));
    assert_eq!(
        ntfs,
        BTreeMap::from([("hello.txt".to_string(), entry("file", 1600))])
    );

    // get: the 5 MiB file, reading far less than the 256 MiB disk.
    let out = env.path("big.out");
    let g = json(&["get", "/big.bin", "--to", &s(&out), "--partition", "2"]);
    assert_eq!(g["path"], "/big.bin");
    assert_eq!(u(&g, "size"), 5 * MIB);
    assert!(u(&g, "bytes_fetched") < 16 * MIB, "fetched {g}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(env.path("ext4-src/big.bin")).unwrap()
    );
    // A directory, recursively, into an existing directory; a symlink stays a symlink.
    let dest = env.path("restored");
    std::fs::create_dir(&dest).unwrap();
    json(&["get", "/etc", "--to", &s(&dest), "--partition", "2"]);
    assert_eq!(
        tree_files(&dest.join("etc")),
        tree_files(&env.path("ext4-src/etc"))
    );
    json(&["get", "/link", "--to", &s(&dest), "--partition", "2"]);
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("etc/hostname")
    );
    let fat_out = env.path("fat-docs");
    json(&["get", "/docs", "--to", &s(&fat_out), "--partition", "1"]);
    assert_eq!(tree_files(&fat_out), tree_files(&env.path("fat-src/docs")));
    let ntfs_out = env.path("hello.txt");
    json(&[
        "get",
        "/hello.txt",
        "--to",
        &s(&ntfs_out),
        "--partition",
        "3",
    ]);
    assert_eq!(
        std::fs::read(&ntfs_out).unwrap(),
        std::fs::read(env.path("ntfs-hello.txt")).unwrap()
    );

    // Errors: one line, naming what exists.
    let e = fails(&["ls"]);
    assert!(
        e.contains("--partition") && e.contains("1 (FAT") && e.contains("2 (ext4"),
        "{e}"
    );
    let e = fails(&["ls", "--partition", "7"]);
    assert!(
        e.contains("partition 7 does not exist") && e.contains("3 (NTFS"),
        "{e}"
    );
    let e = fails(&["ls", "/etc/missing", "--partition", "2"]);
    assert!(e.contains("/etc/missing: no such file or directory"), "{e}");
    let e = fails(&["ls", "/small.txt/x", "--partition", "2"]);
    assert!(e.contains("not a directory"), "{e}");
    let e = fails(&["get", "/etc", "--to", &s(&out), "--partition", "2"]);
    assert!(e.contains("not a directory"), "{e}");
    let e = fails(&["get", "/small.txt", "--to", &s(&out), "--partition", "2"]);
    assert!(e.contains("already exists"), "{e}");
    for e in [
        fails(&["ls"]),
        fails(&[
            "get",
            "/etc/missing",
            "--to",
            &s(&env.path("x")),
            "--partition",
            "2",
        ]),
    ] {
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
}

#[test]
fn files_mbr_disk_and_older_snapshots() {
    let env = Env::new();
    let img = env.path("mbr.raw");
    tool("truncate", &["-s", "160M", &s(&img)]);
    let table = "label: dos\nstart=2048, size=64MiB, type=c\nsize=+, type=83\n";
    let mut child = std::process::Command::new("sfdisk")
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(table.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let fat_first = 2048;
    let fat_sectors = 64 * MIB / 512;
    let ext_first = fat_first + fat_sectors;
    let ext_sectors = 160 * MIB / 512 - ext_first;
    let fat = env.path("fat-src");
    fat_tree(&fat, "version one\n");
    mkfs_fat(&img, fat_first, fat_sectors, false, &fat);
    let ext = env.path("ext4-src");
    ext4_tree(&ext, "vm1\n");
    mkfs_ext4(&img, ext_first, ext_sectors, &ext);
    let old = backup(&env, &img);

    let ls = |snap: &str, part: &str, path: &str| {
        listing(&env.json(&[
            "files",
            "ls",
            snap,
            "--vm",
            "vm1",
            "--disk",
            "mbr",
            path,
            "--partition",
            part,
        ]))
    };
    assert_eq!(ls(&old, "1", "/")["readme.txt"], entry("file", 12));
    assert_eq!(ls(&old, "2", "/etc")["hostname"], entry("file", 4));
    let e = env.fails(&[
        "files",
        "ls",
        &old,
        "--vm",
        "vm1",
        "--disk",
        "mbr",
        "--partition",
        "3",
    ]);
    assert!(
        e.contains("partition 3 does not exist") && e.contains("2 (ext4"),
        "{e}"
    );

    // Change a file, back up again: each snapshot gives its own content.
    fat_tree(&fat, "version two, longer\n");
    fat_put(&img, fat_first, &fat);
    let new = backup(&env, &img);
    assert_ne!(old, new);
    for (snap, want) in [(&old, "version one\n"), (&new, "version two, longer\n")] {
        let out = env.path(&format!("readme-{snap}"));
        let g = env.json(&[
            "files",
            "get",
            snap,
            "--vm",
            "vm1",
            "--disk",
            "mbr",
            "/README.TXT",
            "--to",
            &s(&out),
            "--partition",
            "1",
        ]);
        assert_eq!(u(&g, "size"), want.len() as u64);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), want);
    }
    // The whole ext4 root, recursively.
    let out = env.path("ext-root");
    let g = env.json(&[
        "files",
        "get",
        "latest",
        "--vm",
        "vm1",
        "--disk",
        "mbr",
        "/",
        "--to",
        &s(&out),
        "--partition",
        "2",
    ]);
    assert!(u(&g, "size") > 5 * MIB);
    assert_eq!(tree_files(&out), tree_files(&ext));
    assert!(
        std::fs::symlink_metadata(out.join("link"))
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn files_whole_disk_file_systems_and_bad_disks() {
    let env = Env::new();
    // ext4 on the whole disk: partition 0, chosen by default.
    let img = env.path("plain.raw");
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f.txt"), "whole disk\n").unwrap();
    tool("truncate", &["-s", "32M", &s(&img)]);
    tool("mkfs.ext4", &["-q", "-F", "-d", &s(&src), &s(&img)]);
    backup(&env, &img);
    let l = listing(&env.json(&[
        "files", "ls", "latest", "--vm", "vm1", "--disk", "plain", "/d",
    ]));
    assert_eq!(l["f.txt"], entry("file", 11));
    let l = listing(&env.json(&[
        "files",
        "ls",
        "latest",
        "--vm",
        "vm1",
        "--disk",
        "plain",
        "/d",
        "--partition",
        "0",
    ]));
    assert_eq!(l.len(), 1);

    // No partition table and no file system.
    let blank = env.path("blank.raw");
    raw_image(&blank, 8 * MIB, &[(MIB, noise(4096, 3))]);
    backup(&env, &blank);
    let e = env.fails(&["files", "ls", "latest", "--vm", "vm1", "--disk", "blank"]);
    assert!(
        e.contains("no partition table and no recognised file system"),
        "{e}"
    );

    // A partition whose file system is not recognised, and a corrupt ext4 (right magic,
    // garbage around it).
    let gpt = env.path("odd.raw");
    tool("truncate", &["-s", "16M", &s(&gpt)]);
    tool(
        "sgdisk",
        &["-o", "-n", "1:2048:+4M", "-n", "2:0:+4M", &s(&gpt)],
    );
    let (f2, _) = gpt_extent(&gpt, 2);
    let mut sb = noise(4096, 9);
    sb[1080] = 0x53;
    sb[1081] = 0xEF;
    let f = std::fs::OpenOptions::new().write(true).open(&gpt).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &sb, f2 * 512).unwrap();
    drop(f);
    backup(&env, &gpt);
    let odd = |extra: &[&str]| {
        let mut a = vec!["files", "ls", "latest", "--vm", "vm1", "--disk", "odd"];
        a.extend_from_slice(extra);
        env.fails(&a)
    };
    let e = odd(&["--partition", "1"]);
    assert!(
        e.contains("partition 1 holds no recognised file system"),
        "{e}"
    );
    let e = odd(&["--partition", "2"]);
    assert!(e.contains("ext4 file system is corrupt"), "{e}");
    let e = odd(&[]);
    assert!(e.contains("ext4"), "{e}");
}
