//! The scan of a core on a thread of its own, so passing the core on never waits for the
//! scan of the same bytes: a few 1 MiB buffers go round between the pump and this thread
//! (memory stays bounded whatever the core's size; the pump waits for a buffer when the
//! scan is behind). The stream scanner finds a credential cut across two buffers once;
//! every buffer is zeroized before it goes back.
use std::{
    sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender},
    thread::JoinHandle,
};

use zeroize::Zeroize;

use super::forward::Feed;
use crate::{
    crash::DumpHit,
    detect::{frozen::FrozenSet, stream::StreamScanner, Detector, Engine},
};

pub const BUFFER: usize = 1 << 20;
const BUFFERS: usize = 4;

/// What the scan found.
#[derive(Debug, Default)]
pub struct Scanned {
    pub bytes: u64,
    pub hits: Vec<DumpHit>,
}

pub struct ScanThread {
    tx: Option<SyncSender<(Vec<u8>, usize)>>,
    back: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<Scanned>>,
}

impl ScanThread {
    pub fn start(engine: Engine, frozen: FrozenSet) -> std::io::Result<ScanThread> {
        let (tx, rx) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
        let (back_tx, back) = channel();
        for _ in 0..BUFFERS {
            let _ = back_tx.send(vec![0u8; BUFFER]);
        }
        let thread = std::thread::Builder::new()
            .name("lw-core-scan".into())
            .spawn(move || scan(&engine, &frozen, rx, back_tx))?;
        Ok(ScanThread {
            tx: Some(tx),
            back,
            thread: Some(thread),
        })
    }

    /// Waits for the scan of everything fed.
    pub fn finish(mut self) -> Scanned {
        drop(self.tx.take());
        let s = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        while let Ok(mut b) = self.back.try_recv() {
            crate::wipe::vec(&mut b);
        }
        s
    }
}

impl Feed for ScanThread {
    fn buffer(&mut self) -> Vec<u8> {
        // The thread only ends when fed nothing more, so a buffer comes back; a fresh
        // one if it died.
        self.back.recv().unwrap_or_else(|_| vec![0u8; BUFFER])
    }

    fn feed(&mut self, mut buf: Vec<u8>, len: usize) {
        if let Some(tx) = &self.tx {
            if let Err(e) = tx.send((buf, len)) {
                let (mut b, _) = e.0;
                crate::wipe::vec(&mut b);
            }
        } else {
            crate::wipe::vec(&mut buf);
        }
    }
}

fn scan(
    engine: &Engine,
    frozen: &FrozenSet,
    rx: Receiver<(Vec<u8>, usize)>,
    back: Sender<Vec<u8>>,
) -> Scanned {
    let d = Detector::new(engine, Some(frozen));
    let mut sc = StreamScanner::new(engine);
    let mut out = Scanned::default();
    for (mut buf, len) in rx {
        out.bytes += len as u64;
        crate::crash::add_hits(&mut out.hits, sc.feed(&d, &buf[..len]));
        buf[..len].zeroize();
        let _ = back.send(buf);
    }
    crate::crash::add_hits(&mut out.hits, sc.finish(&d));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::samples::{sample, Rng};

    #[test]
    fn a_key_across_two_buffers_is_found_once_at_its_offset() {
        let (secret, text) = sample("github-pat", &mut Rng::seeded(7)).unwrap();
        let mut data = vec![0x5au8; 3 * BUFFER];
        let at = BUFFER - 10;
        let line = format!("GITHUB_TOKEN={text}\n");
        data[at..at + line.len()].copy_from_slice(line.as_bytes());
        let key_at = (at + line.find(&secret).unwrap()) as u64;
        let mut t = ScanThread::start(Engine::builtin(), FrozenSet::default()).unwrap();
        for chunk in data.chunks(BUFFER) {
            let mut b = t.buffer();
            b[..chunk.len()].copy_from_slice(chunk);
            t.feed(b, chunk.len());
        }
        let s = t.finish();
        assert_eq!(s.bytes, data.len() as u64);
        assert_eq!(s.hits.len(), 1, "{:?}", s.hits);
        assert_eq!(s.hits[0].offset, key_at);
        assert_eq!(s.hits[0].rule, "github-pat");
    }
}
