//! The durable floor the benchmark holds the command path against (`POST /bench/floor`):
//! each letter's bytes written into a preallocated file and synced, one `fdatasync` per
//! group, by a thread of its own that answers every request of the group once the sync
//! returns. That is the least any durable acknowledgement costs on this machine and this
//! HTTP stack: a hand-off, a write, a sync and a wake-up, with no log format, no rules, no
//! index and no read side.
//!
//! The file is a ring: it is filled with zeros before the first group, so a sync never has
//! to record the file's growth, and writing starts over at its beginning when a group
//! would run past its end. Nothing reads it back; it exists to be paid for.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use tokio::sync::{OnceCell, oneshot};

/// The ring's size.
const RING_BYTES: u64 = 16 << 20;

/// Requests taken into one group at most.
const MAX_GROUP: usize = 4096;

/// An append waiting for its group's sync.
struct Append {
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<(), Arc<io::Error>>>,
}

/// The floor's file and, once the first append has started it, its writer thread's queue.
/// Nothing is opened or started before that, so a server that serves the benchmark's
/// endpoints starts and idles like any other. The thread ends once every handle is dropped.
#[derive(Debug, Clone)]
pub struct SyncedAppends {
    path: Arc<PathBuf>,
    queue: Arc<OnceCell<Sender<Append>>>,
}

impl SyncedAppends {
    /// The floor writing into the file at `path` (created when first written).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path: Arc::new(path),
            queue: Arc::new(OnceCell::new()),
        }
    }

    /// Writes `bytes` and returns once a sync covered them.
    pub async fn append(&self, bytes: Vec<u8>) -> Result<(), Arc<io::Error>> {
        // Opening the file and starting the thread block: not on an async worker.
        let queue = self
            .queue
            .get_or_try_init(|| {
                let path = self.path.clone();
                async move {
                    tokio::task::spawn_blocking(move || start(&path))
                        .await
                        .map_err(io::Error::other)?
                }
            })
            .await
            .map_err(Arc::new)?;
        let (done, synced) = oneshot::channel();
        let stopped = || Arc::new(io::Error::other("the floor's writer has stopped"));
        queue.send(Append { bytes, done }).map_err(|_| stopped())?;
        synced.await.map_err(|_| stopped())?
    }
}

/// Opens the file and starts its writer, which fills the ring before it takes the first
/// group.
fn start(path: &Path) -> io::Result<Sender<Append>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let (queue, arrivals) = channel();
    std::thread::Builder::new()
        .name("santa-bench-floor".into())
        .spawn(move || match fill(&file) {
            Ok(()) => write_groups(&file, &arrivals),
            Err(error) => {
                let error = Arc::new(error);
                while let Ok(append) = arrivals.recv() {
                    let _ = append.done.send(Err(error.clone()));
                }
            }
        })?;
    Ok(queue)
}

/// Writes the whole ring once and syncs it, so that later syncs only carry data.
fn fill(file: &File) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    for chunk in 0..RING_BYTES / zeros.len() as u64 {
        file.write_all_at(&zeros, chunk * zeros.len() as u64)?;
    }
    file.sync_all()
}

/// The writer: takes whatever has arrived, writes it at the ring's offset, syncs once and
/// answers the group.
fn write_groups(file: &File, arrivals: &Receiver<Append>) {
    let mut offset = 0u64;
    let mut buffer = Vec::new();
    while let Ok(first) = arrivals.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match arrivals.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        buffer.clear();
        for append in &group {
            buffer.extend_from_slice(&append.bytes);
        }
        if offset + buffer.len() as u64 > RING_BYTES {
            offset = 0;
        }
        let written = file
            .write_all_at(&buffer, offset)
            .and_then(|()| file.sync_data());
        offset += buffer.len() as u64;
        let answer = written.map_err(Arc::new);
        for append in group {
            // A request that gave up no longer waits for its answer.
            let _ = append.done.send(answer.clone());
        }
    }
}
