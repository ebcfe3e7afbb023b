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
