//! File I/O on the shard's own executor (io_uring through glommio): the durable log's
//! append-only segments. Nothing here blocks the event loop.

use std::io;
use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, Directory};

/// A file written from its start, in order, by one task.
pub struct AppendFile {
    file: BufferedFile,
    path: PathBuf,
    len: u64,
}

impl AppendFile {
    /// Creates (or empties) the file at `path`.
    pub async fn create(path: &Path) -> io::Result<AppendFile> {
        let file = BufferedFile::create(path).await.map_err(io::Error::from)?;
        Ok(AppendFile { file, path: path.to_owned(), len: 0 })
    }

    /// Writes all of `data` at the end (a short write is continued, as `write(2)` allows).
    pub async fn append(&mut self, mut data: Vec<u8>) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.file.write_at(data.clone(), self.len).await.map_err(io::Error::from)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "the disk took no bytes"));
            }
            self.len += n as u64;
            data.drain(..n.min(data.len()));
        }
        Ok(())
    }

    /// `fdatasync`: returns once what was appended is on the device.
    pub async fn sync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(io::Error::from)
    }

    /// Bytes written.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file (within its file system: atomic).
    pub async fn rename(&mut self, to: &Path) -> io::Result<()> {
        self.file.rename(to).await.map_err(io::Error::from)?;
        self.path = to.to_owned();
        Ok(())
    }

    /// Closes the file.
    pub async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(io::Error::from)
    }
}

/// Syncs directory `dir`, so that files created, renamed or removed in it stay so after
/// a crash of the machine.
pub async fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = Directory::open(dir).await.map_err(io::Error::from)?;
    d.sync().await.map_err(io::Error::from)?;
    d.close().await.map_err(io::Error::from)
}
