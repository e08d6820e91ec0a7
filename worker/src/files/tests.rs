//! Small real ext4 and FAT images built with mkfs (e2fsprogs, dosfstools, mtools): read
//! back through a snapshot reader, then mutated byte by byte to check that a corrupt file
//! system gives errors, never a panic or a hang.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bora_core::chunk;
use bora_core::index::DiskIndex;
use bora_core::store::ChunkStore;
use bora_core::store::memory::MemoryChunkStore;

use super::*;

const CS: u32 = 64 << 10;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (install e2fsprogs, dosfstools, mtools): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/deep/er")).unwrap();
    std::fs::write(dir.join("etc/hostname"), b"vm1\n").unwrap();
    std::fs::write(dir.join("etc/deep/er/leaf.txt"), b"leaf").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), big).unwrap();
}

/// A 2 MiB ext4 image of [`tree`] plus a symlink.
fn ext4_image(tmp: &Path) -> Vec<u8> {
    let d = tmp.join("ext4-tree");
    tree(&d);
    std::os::unix::fs::symlink("etc/hostname", d.join("link")).unwrap();
    let img = tmp.join("ext4.img");
    let img_s = img.to_str().unwrap();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-N",
            "64",
            "-d",
            d.to_str().unwrap(),
            img_s,
            "2M",
        ],
    );
    std::fs::read(&img).unwrap()
}

/// A 2 MiB FAT12 image of [`tree`].
fn fat_image(tmp: &Path) -> Vec<u8> {
    let d = tmp.join("fat-tree");
    tree(&d);
    let img = tmp.join("fat.img");
    let img_s = img.to_str().unwrap();
    run("mkfs.fat", &["-C", img_s, "2048"]);
    for e in ["etc", "big.bin"] {
        run(
            "mcopy",
            &["-i", img_s, "-s", d.join(e).to_str().unwrap(), "::/"],
        );
    }
    std::fs::read(&img).unwrap()
}

/// A 4 MiB NTFS image with two files (ntfs-3g's mkntfs and ntfscp).
fn ntfs_image(tmp: &Path) -> Vec<u8> {
    let img = tmp.join("ntfs.img");
    let img_s = img.to_str().unwrap();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    run("mkntfs", &["-F", "-Q", "-q", img_s]);
    let d = tmp.join("ntfs-src");
    tree(&d);
    run(
        "ntfscp",
        &[img_s, d.join("big.bin").to_str().unwrap(), "/big.bin"],
    );
    run(
        "ntfscp",
        &[img_s, d.join("etc/hostname").to_str().unwrap(), "/hostname"],
    );
    std::fs::read(&img).unwrap()
}

async fn reader(disk: &[u8]) -> Arc<SnapshotReader> {
    let store = Arc::new(MemoryChunkStore::default());
    let mut idx = DiskIndex::zeroed(disk.len() as u64, CS).unwrap();
    let mut chunks = Vec::new();
    for i in 0..idx.len() {
        let (off, len) = idx.chunk_extent(i);
        let data = &disk[off as usize..(off + u64::from(len)) as usize];
        if data.iter().all(|b| *b == 0) {
            continue;
        }
        let enc = chunk::encode(data, 1).unwrap();
        idx.set(i, Some(enc.digest));
        chunks.push(enc);
    }
    store.put(chunks).await.unwrap();
    Arc::new(SnapshotReader::new(store, Arc::new(idx), 64))
}

fn names(l: &Listing) -> Vec<(String, EntryKind, u64)> {
    let mut v: Vec<_> = l
        .entries
        .iter()
        .map(|e| (e.name.to_lowercase(), e.kind, e.size))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

async fn check_reads_back(img: Vec<u8>, kind: FsKind) {
    let r = reader(&img).await;
    let parts = partitions(&r).await.unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!((parts[0].number, parts[0].fs), (0, Some(kind)));
    let root = list(&r, None, "/").await.unwrap();
    let n = names(&root);
    assert!(
        n.contains(&("big.bin".into(), EntryKind::File, 300_000)),
        "{n:?}"
    );
    assert!(
        n.iter().any(|e| e.0 == "etc" && e.1 == EntryKind::Dir),
        "{n:?}"
    );
    assert!(root.entries.iter().all(|e| e.mtime.is_some()));
    // ".." and empty components.
    let deep = list(&r, Some(0), "//etc/deep/../deep/./er").await.unwrap();
    assert_eq!(names(&deep), vec![("leaf.txt".into(), EntryKind::File, 4)]);
    assert!(matches!(
        list(&r, None, "/nope").await,
        Err(FilesError::NotFound { .. })
    ));
    assert!(matches!(
        list(&r, Some(3), "/").await,
        Err(FilesError::NoSuchPartition { number: 3, .. })
    ));

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let rep = get(&r, None, "/", &out).await.unwrap();
    assert_eq!(rep.files, 3);
    let want: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), want);
    assert_eq!(
        std::fs::read(out.join("etc/deep/er/leaf.txt")).unwrap(),
        b"leaf"
    );
    // Nothing is overwritten.
    assert!(matches!(
        get(&r, None, "/etc/hostname", &out.join("big.bin")).await,
        Err(FilesError::Destination(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_ext4_image_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let img = ext4_image(tmp.path());
    check_reads_back(img.clone(), FsKind::Ext4).await;
    let r = reader(&img).await;
    let l = list(&r, None, "/link").await.unwrap();
    assert_eq!(l.entries[0].kind, EntryKind::Symlink);
    let out = tmp.path().join("l");
    get(&r, None, "/link", &out).await.unwrap();
    assert_eq!(
        std::fs::read_link(&out).unwrap().to_str(),
        Some("etc/hostname")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_fat_image_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    check_reads_back(fat_image(tmp.path()), FsKind::Fat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_blank_disk_is_a_clear_error() {
    let r = reader(&vec![0u8; 1 << 20]).await;
    let e = list(&r, None, "/").await.unwrap_err();
    assert!(matches!(e, FilesError::NoFileSystem), "{e}");
}

#[test]
fn files_paths_normalize() {
    assert_eq!(normalize("/"), Vec::<String>::new());
    assert_eq!(normalize("a//b/./c/.."), vec!["a", "b"]);
    assert_eq!(normalize("/../../etc"), vec!["etc"]);
    assert_eq!(display_path(&normalize("x/y")), "/x/y");
}

/// xorshift64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// How one corrupt image went: listed and copied fine, a parser panic caught, an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Caught,
    Error,
}

/// Runs ls + a recursive get of everything over a (corrupt) image: errors are fine, a
/// panic that escapes, an internal error or a case that takes over 20 s is not.
async fn check_corrupt(img: &[u8], label: &str) -> Vec<(Outcome, String)> {
    let r = reader(img).await;
    let tmp = tempfile::tempdir().unwrap();
    let work = async {
        let l = list(&r, None, "/").await;
        let g = get_bounded(&r, None, "/", &tmp.path().join("out"), 64 << 20).await;
        (l, g)
    };
    let (l, g) = tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .unwrap_or_else(|_| panic!("{label} hung"));
    [l.map(|_| ()), g.map(|_| ())]
        .into_iter()
        .map(|res| match res {
            Ok(()) => (Outcome::Ok, String::new()),
            Err(e @ FilesError::Crashed { .. }) => (Outcome::Caught, e.to_string()),
            Err(FilesError::Internal(e)) => panic!("{label}: {e}"),
            Err(e) => (Outcome::Error, e.to_string()),
        })
        .collect()
}

/// The kept corpus: corrupt images (zstd) that once made a parser panic.
fn corpus_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus")
}

/// Mutates bytes of `img` in its non-zero sectors (where the metadata is), `cases` times
/// (times `BORA_FUZZ_SCALE` if set), checking each with [`check_corrupt`]. With
/// `BORA_FUZZ_SAVE=DIR`, cases whose parser panicked (caught), and the first `keep` that
/// gave an error not seen before (digits ignored), are saved there, zstd compressed, for
/// the corpus.
async fn fuzz(fs: &str, img: Vec<u8>, seed: u64, cases: usize, keep: usize) {
    quiet_guarded_panics();
    let scale: usize = std::env::var("BORA_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let save = std::env::var_os("BORA_FUZZ_SAVE").map(std::path::PathBuf::from);
    let sectors: Vec<usize> = (0..img.len() / 512)
        .filter(|s| img[s * 512..(s + 1) * 512].iter().any(|b| *b != 0))
        .collect();
    let head = sectors.iter().take_while(|s| **s < 64).count();
    let mut rng = Rng(seed);
    let mut outcomes = [0usize; 3];
    let mut seen = std::collections::HashSet::new();
    for case in 0..cases * scale {
        let mut m = img.clone();
        for _ in 0..1 + rng.below(16) {
            // Mostly the first 32 KiB (boot sector, superblock, FATs, group descriptors,
            // root directory), else any sector with data.
            let s = if rng.below(4) == 0 || head == 0 {
                sectors[rng.below(sectors.len())]
            } else {
                sectors[rng.below(head)]
            };
            let at = s * 512 + rng.below(512);
            m[at] = match rng.below(4) {
                0 => 0,
                1 => 0xFF,
                2 => m[at] ^ (1 << rng.below(8)),
                _ => rng.next() as u8,
            };
        }
        let label = format!("{fs} case {case} (seed {seed:#x})");
        let got = check_corrupt(&m, &label).await;
        let mut new = false;
        for (o, msg) in &got {
            outcomes[*o as usize] += 1;
            let shape: String = msg.chars().filter(|c| !c.is_ascii_digit()).collect();
            new |= *o == Outcome::Caught
                || (*o == Outcome::Error && seen.len() < keep && seen.insert(shape));
        }
        if let Some(dir) = &save
            && new
        {
            std::fs::create_dir_all(dir).unwrap();
            let z = zstd::encode_all(&m[..], 19).unwrap();
            std::fs::write(dir.join(format!("{fs}-{seed:x}-{case}.img.zst")), z).unwrap();
        }
    }
    eprintln!("{fs}: ok / caught panics / errors: {outcomes:?}");
}

/// Every image of the kept corpus still gives errors, never a crash or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_fuzz_corpus_replays_without_crashing() {
    quiet_guarded_panics();
    let mut n = 0;
    for e in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "zst") {
            continue;
        }
        let img = zstd::decode_all(std::fs::File::open(&path).unwrap()).unwrap();
        check_corrupt(&img, &path.display().to_string()).await;
        n += 1;
    }
    assert!(
        n >= 10,
        "the corpus in {} has {n} images",
        corpus_dir().display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_corrupt_ext4_never_panics_or_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    fuzz("ext4", ext4_image(tmp.path()), 0x5eed_e474, 600, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_corrupt_fat_never_panics_or_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    fuzz("fat", fat_image(tmp.path()), 0x05ee_dfa7, 600, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_ntfs_image_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let r = reader(&ntfs_image(tmp.path())).await;
    let root = list(&r, None, "/").await.unwrap();
    assert_eq!(
        names(&root),
        vec![
            ("big.bin".into(), EntryKind::File, 300_000),
            ("hostname".into(), EntryKind::File, 4)
        ]
    );
    let out = tmp.path().join("big");
    get(&r, None, "/BIG.BIN", &out).await.unwrap();
    let want: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    assert_eq!(std::fs::read(&out).unwrap(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_corrupt_ntfs_never_panics_or_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    fuzz("ntfs", ntfs_image(tmp.path()), 0x0bad_0f75, 400, 4).await;
}

#[test]
fn files_guarded_turns_a_panic_into_an_error() {
    quiet_guarded_panics();
    let stage = std::cell::Cell::new("the test reader");
    let r: Result<(), FilesError> = guarded(&stage, || panic!("boom"));
    let e = r.unwrap_err().to_string();
    assert_eq!(e, "the test reader crashed on corrupt data: boom");
}
