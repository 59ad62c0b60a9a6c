//! Reading a file of the set (configuration, rules, keys, certificates, the geo database):
//! a regular file only, within a size bound. A path that names a FIFO or a character device
//! would block the read (or never end it: `/dev/zero`), and with it every later reload and the
//! poll; a directory cannot be read. Opened without blocking, checked, then read.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The most a configuration, rules, key or certificate file may hold.
pub const MAX_BYTES: u64 = 16 << 20;
/// The most a geo database may hold (GeoLite2 City is about 60 MiB).
pub const MAX_GEO_BYTES: u64 = 1 << 30;

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// Opens `path` for reading: a regular file, or an error that says what it is instead.
pub fn open(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO opened for reading would wait for a writer.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a FIFO, socket or device)"
        };
        return Err(invalid(format!("it is {what}")));
    }
    Ok(file)
}

/// The bytes of `path`, a regular file of at most `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = open(path)?;
    let mut bytes = Vec::new();
    // The bound holds for a file that grows while it is read, too.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(invalid(format!("it is larger than {limit} bytes")));
    }
    Ok(bytes)
}

/// The bytes of `path`, a regular file of at most [`MAX_BYTES`].
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    read_limited(path, MAX_BYTES)
}

/// The text of `path`, a regular UTF-8 file of at most [`MAX_BYTES`].
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read(path)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.toml");
        std::fs::write(&file, "x = 1\n").unwrap();
        assert_eq!(read_to_string(&file).unwrap(), "x = 1\n");
        assert_eq!(read_limited(&file, 6).unwrap().len(), 6);
        let e = read_limited(&file, 5).unwrap_err();
        assert!(e.to_string().contains("larger than 5 bytes"), "{e}");
        let e = read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let e = read(&fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::write(dir.path().join("bad"), [0xff, 0xfe]).unwrap();
        assert!(read_to_string(&dir.path().join("bad")).is_err());
    }
}
