//! The async form works on any executor: the flusher thread wakes the task's waker.

use std::collections::HashMap;

use futures::future::join_all;

use crate::support::{Env, both, parse, payload, read_all, small};

both!(
    tokio_tasks_await_their_tickets,
    futures_executor_awaits_tickets
);

fn tokio_tasks_await_their_tickets(env: &Env) {
    let (log, _) = env.open(small()).unwrap();
    let log = std::sync::Arc::new(log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let acked: Vec<(u64, u32, u32)> = rt.block_on(async {
        let tasks: Vec<_> = (0..8u32)
            .map(|w| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for chunk in 0..10u32 {
                        let tickets: Vec<_> = (0..30)
                            .map(|i| {
                                (
                                    chunk * 30 + i,
                                    log.append(&payload(w, chunk * 30 + i)).unwrap(),
                                )
                            })
                            .collect();
                        for (seq, t) in tickets {
                            acked.push((t.await.unwrap().get(), w, seq));
                        }
                    }
                    acked
                })
            })
            .collect();
        join_all(tasks)
            .await
            .into_iter()
            .flat_map(Result::unwrap)
            .collect()
    });
    assert_eq!(acked.len(), 8 * 300);
    let log = std::sync::Arc::try_unwrap(log).unwrap();
    let found: HashMap<u64, (u32, u32)> = read_all(&log)
        .iter()
        .map(|(id, _, p)| (*id, parse(p)))
        .collect();
    for (id, w, seq) in acked {
        assert_eq!(found.get(&id), Some(&(w, seq)));
    }
    log.close().unwrap();
}

fn futures_executor_awaits_tickets(env: &Env) {
    let (log, _) = env.open(small()).unwrap();
    let tickets: Vec<_> = (0..500)
        .map(|seq| log.append(&payload(9, seq)).unwrap())
        .collect();
    let ids: Vec<u64> =
        futures::executor::block_on(join_all(tickets.into_iter().map(|t| t.durable())))
            .into_iter()
            .map(|r| r.unwrap().get())
            .collect();
    assert_eq!(ids.len(), 500);
    // A current-thread tokio runtime too, and a future dropped before it resolves.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let dropped = log.append(b"nobody awaits this one").unwrap().durable();
        drop(dropped);
        let id = log.append(b"awaited").unwrap().await.unwrap();
        assert!(id.get() > ids[499]);
    });
    log.close().unwrap();
}

/// A storage whose file syncs wait at a gate the test opens and closes: it holds the flusher
/// in the middle of a flush, with both of a slice's buffers out of writers' reach.
#[derive(Debug, Clone)]
struct Gated {
    inner: double_buffer::MemStorage,
    gate: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Gated {
    fn set_open(&self, open: bool) {
        *self.gate.0.lock().unwrap() = open;
        self.gate.1.notify_all();
    }
}

#[derive(Debug)]
struct GatedFile {
    inner: Box<dyn double_buffer::StorageFile>,
    gate: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl GatedFile {
    fn pass(&self) {
        let mut open = self.gate.0.lock().unwrap();
        while !*open {
            open = self.gate.1.wait(open).unwrap();
        }
    }
}

impl double_buffer::Storage for Gated {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&self, name: &str) -> std::io::Result<Box<dyn double_buffer::StorageFile>> {
        Ok(Box::new(GatedFile {
            inner: self.inner.create(name)?,
            gate: self.gate.clone(),
        }))
    }
    fn open(
        &self,
        name: &str,
        write: bool,
    ) -> std::io::Result<Box<dyn double_buffer::StorageFile>> {
        self.inner.open(name, write)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
    fn path_of(&self, name: &str) -> std::path::PathBuf {
        self.inner.path_of(name)
    }
}

impl double_buffer::StorageFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn preallocate(&self, len: u64) -> std::io::Result<()> {
        self.inner.preallocate(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.pass();
        self.inner.sync_data()
    }
    fn sync_all(&self) -> std::io::Result<()> {
        self.pass();
        self.inner.sync_all()
    }
}

/// `append_keyed_async` on a one-thread runtime while the flusher is stuck in a sync: once
/// both buffers are full the appending task yields instead of blocking the thread — another
/// task on the same thread keeps running, and it is the one that lets the flusher go on —
/// and every record is then appended, in order, and made durable.
#[test]
fn async_appends_wait_for_room_without_blocking_the_thread() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let gated = Gated {
        inner: double_buffer::MemStorage::new(),
        gate: Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new())),
    };
    let config = double_buffer::Config {
        slices: 2,
        buffer_size: 4 << 10,
        linger: std::time::Duration::from_millis(1),
        ..double_buffer::Config::default()
    };
    let (log, _) =
        double_buffer::SpillLog::open_with_storage(Arc::new(gated.clone()), config).unwrap();
    let log = Arc::new(log);
    // Two buffers of 4 KiB hold a few dozen of these records: 400 must wait for room.
    const N: u32 = 400;
    gated.set_open(false);
    // Should the append block the thread, nothing else on it runs: a watchdog opens the gate
    // so that the test fails instead of hanging.
    let rescued = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (gated, rescued) = (gated.clone(), rescued.clone());
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(20));
            if !rescued.swap(true, Ordering::SeqCst) {
                gated.set_open(true);
            }
        })
    };
    let appended = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (at_release, ids) = rt.block_on(async {
        let appender = {
            let (log, appended) = (log.clone(), appended.clone());
            tokio::spawn(async move {
                let mut tickets = Vec::new();
                for seq in 0..N {
                    tickets.push(log.append_keyed_async(3, &payload(1, seq)).await.unwrap());
                    appended.fetch_add(1, Ordering::SeqCst);
                }
                let mut ids = Vec::new();
                for t in tickets {
                    ids.push(t.await.unwrap().get());
                }
                ids
            })
        };
        // Runs only if the appender yields; it releases the flusher once the appender has
        // stopped making progress (both buffers full).
        let releaser = {
            let (gated, appended, rescued) = (gated.clone(), appended.clone(), rescued.clone());
            tokio::spawn(async move {
                let mut last = usize::MAX;
                let mut still = 0;
                while still < 2_000 {
                    let now = appended.load(Ordering::SeqCst);
                    still = if now == last { still + 1 } else { 0 };
                    last = now;
                    tokio::task::yield_now().await;
                }
                assert!(
                    !rescued.swap(true, Ordering::SeqCst),
                    "the watchdog had to open the gate: an append blocked the thread"
                );
                gated.set_open(true);
                last
            })
        };
        let at_release = releaser.await.unwrap();
        let ids = tokio::time::timeout(std::time::Duration::from_secs(60), appender)
            .await
            .expect("the appender was never woken once the flusher freed a buffer")
            .unwrap();
        (at_release, ids)
    });
    assert!(
        at_release > 0 && at_release < N as usize,
        "the appender must have filled both buffers and waited: {at_release} appended"
    );
    assert_eq!(ids.len(), N as usize);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids follow append order"
    );
    let log = Arc::try_unwrap(log).unwrap();
    let read: Vec<(u32, u32)> = read_all(&log).iter().map(|(_, _, p)| parse(p)).collect();
    assert_eq!(read, (0..N).map(|seq| (1, seq)).collect::<Vec<_>>());
    log.close().unwrap();
    rescued.store(true, Ordering::SeqCst);
    drop(watchdog);
}
