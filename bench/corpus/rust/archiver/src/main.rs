//! `archiver [ROUNDS=10]`: backs up a directory the way a nightly job does,
//! with the `tar` and `flate2` crates (miniz_oxide) from crates.io. Each
//! round packs `/data/src` into `/data/backups/N.tar.gz`, unpacks the
//! previous round's archive into `/data/restore`, compares every restored
//! file with its source, appends a line to `/data/backups/index.txt`, and
//! deletes the archive of two rounds before. Deterministic: stdout and the
//! final files are the same on every run (archive entries are sorted and
//! their times fixed).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn pack(src: &Path, to: &Path) -> std::io::Result<u64> {
    let gz = flate2::write::GzEncoder::new(File::create(to)?, flate2::Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    for f in files_under(src)? {
        let rel = f.strip_prefix(src).map_err(std::io::Error::other)?;
        let data = fs::read(&f)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        tar.append_data(&mut header, rel, data.as_slice())?;
    }
    tar.into_inner()?.finish()?;
    Ok(fs::metadata(to)?.len())
}

fn unpack_and_check(archive: &Path, src: &Path, into: &Path) -> std::io::Result<(u64, u64)> {
    if into.exists() {
        fs::remove_dir_all(into)?;
    }
    fs::create_dir_all(into)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(File::open(archive)?));
    let (mut files, mut bytes) = (0, 0);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let rel = entry.path()?.into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        let out = into.join(&rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&out, &data)?;
        if fs::read(src.join(&rel))? != data {
            return Err(std::io::Error::other(format!("{} differs", rel.display())));
        }
        files += 1;
        bytes += data.len() as u64;
    }
    Ok((files, bytes))
}

fn main() -> std::io::Result<()> {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let data = Path::new("/data");
    let src = data.join("src");
    let backups = data.join("backups");
    fs::create_dir_all(&backups)?;
    for r in 1..=rounds {
        let archive = backups.join(format!("{r}.tar.gz"));
        let size = pack(&src, &archive)?;
        let mut line = format!("round {r}: {size} bytes packed");
        if r > 1 {
            let prev = backups.join(format!("{}.tar.gz", r - 1));
            let (files, bytes) = unpack_and_check(&prev, &src, &data.join("restore"))?;
            line.push_str(&format!(", {files} files / {bytes} bytes restored and checked"));
        }
        if r > 2 {
            fs::remove_file(backups.join(format!("{}.tar.gz", r - 2)))?;
        }
        let mut index = OpenOptions::new()
            .append(true)
            .create(true)
            .open(backups.join("index.txt"))?;
        writeln!(index, "{line}")?;
        println!("{line}");
    }
    Ok(())
}
