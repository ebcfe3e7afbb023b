//! `ReliableConsumer`: manual acks, prefetch, capped retries, reconnects
//! and a graceful shutdown.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, BackoffConfig};
use crate::error::{Error, Result, invalid};
use crate::rabbit::{check_connection, connect, declare_queue, parse_url, short};
use crate::topology::QueueSpec;

/// Configuration of a [`ReliableConsumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// The queue to consume (declared durable with these arguments at every
    /// connect unless `declare` is off).
    pub queue: QueueSpec,
    /// Declare the queue before consuming.
    pub declare: bool,
    /// `basic.qos` prefetch: most unacknowledged deliveries the broker
    /// sends this consumer. Default 100 (RabbitMQ suggests 100–300; run the
    /// prefetch tuner).
    pub prefetch: u16,
    /// Handlers running at once (at most `prefetch`). Default 1: messages
    /// are handled one at a time, in delivery order.
    pub concurrency: usize,
    /// How often a message may be requeued by [`Outcome::Retry`] before it
    /// is rejected instead (to the dead-letter exchange if the queue has
    /// one). Default 5.
    pub max_retries: u32,
    /// Messages whose retry counts are remembered (classic queues carry no
    /// delivery count; quorum queues' `x-delivery-count` is used when
    /// present). Default 65 536.
    pub retry_memory: usize,
    /// AMQP heartbeat (unless the URL sets one). Default 10 s.
    pub heartbeat: Duration,
    /// Limit for connecting. Default 5 s.
    pub connect_timeout: Duration,
    /// Delay between reconnect attempts.
    pub backoff: BackoffConfig,
    /// Shown in the broker's connection list.
    pub connection_name: String,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue: QueueSpec::classic("mq-reliable"),
            declare: true,
            prefetch: 100,
            concurrency: 1,
            max_retries: 5,
            retry_memory: 1 << 16,
            heartbeat: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            backoff: BackoffConfig::default(),
            connection_name: "mq-reliable consumer".into(),
        }
    }
}

impl ConsumerConfig {
    /// A configuration for `url` and `queue`, with defaults for the rest.
    pub fn new(url: impl Into<String>, queue: QueueSpec) -> ConsumerConfig {
        ConsumerConfig {
            url: url.into(),
            queue,
            ..ConsumerConfig::default()
        }
    }

    /// Checks every field; the error names the field and its value.
    pub fn validate(&self) -> Result<()> {
        check_connection(&self.url, self.heartbeat, self.connect_timeout)?;
        self.queue.validate()?;
        if self.prefetch == 0 {
            return Err(invalid(
                "prefetch",
                self.prefetch,
                "must be positive (0 means unlimited)",
            ));
        }
        if self.concurrency == 0 || self.concurrency > usize::from(self.prefetch) {
            return Err(invalid(
                "concurrency",
                self.concurrency,
                "must be in 1..=prefetch",
            ));
        }
        if self.retry_memory == 0 {
            return Err(invalid(
                "retry_memory",
                self.retry_memory,
                "must be positive",
            ));
        }
        self.backoff.validate()
    }
}

/// What the handler decided about one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: acknowledge; the broker deletes the message.
    Ack,
    /// Failed, try again: nack with requeue, up to
    /// [`ConsumerConfig::max_retries`] times, then reject.
    Retry,
    /// Failed for good: nack without requeue (dead-lettered when the queue
    /// has a dead-letter exchange, dropped otherwise).
    Reject,
}

/// One delivery, as the handler sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The `message_id` property, if the publisher set one (this crate's
    /// publishers always do).
    pub id: Option<String>,
    /// The payload.
    pub payload: Bytes,
    /// The broker's redelivered flag: an earlier delivery of this message
    /// was not acknowledged (a consumer died, or nacked it with requeue).
    pub redelivered: bool,
    /// How many times this message was retried before (0 on first try).
    pub retries: u32,
    /// The routing key it was published with.
    pub routing_key: String,
    /// All AMQP properties (headers, timestamps, ...).
    pub properties: BasicProperties,
}

/// Counters of a consumer since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Deliveries received.
    pub delivered: u64,
    /// Deliveries with the redelivered flag.
    pub redelivered: u64,
    /// Acknowledged.
    pub acked: u64,
    /// Requeued for another try.
    pub retried: u64,
    /// Rejected (by the handler, or after too many retries).
    pub rejected: u64,
    /// Rejected because they reached `max_retries` (poison messages).
    pub poisoned: u64,
    /// Handlers that panicked (treated as `Retry`).
    pub panics: u64,
    /// Connections established.
    pub connections: u64,
    /// The most deliveries held unacknowledged at once.
    pub peak_unacked: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    poisoned: AtomicU64,
    panics: AtomicU64,
    connections: AtomicU64,
    /// Deliveries held on the current channel. Each channel (session) has
    /// its own count: when a connection dies, the broker takes back what
    /// the old channel held, even if its handlers are still running.
    session: std::sync::Mutex<Arc<AtomicU64>>,
    peak_unacked: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ConsumerStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumerStats {
            delivered: g(&self.delivered),
            redelivered: g(&self.redelivered),
            acked: g(&self.acked),
            retried: g(&self.retried),
            rejected: g(&self.rejected),
            poisoned: g(&self.poisoned),
            panics: g(&self.panics),
            connections: g(&self.connections),
            peak_unacked: g(&self.peak_unacked),
        }
    }

    /// Starts counting a new channel's deliveries.
    fn new_session(&self) -> Arc<AtomicU64> {
        let s = Arc::new(AtomicU64::new(0));
        *lock(&self.session) = Arc::clone(&s);
        s
    }

    fn unacked(&self) -> u64 {
        lock(&self.session).load(Ordering::Relaxed)
    }

    fn hold(&self, session: &AtomicU64) {
        let now = session.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak_unacked.fetch_max(now, Ordering::AcqRel);
    }
}

/// Called *before* the ack or nack is sent: the broker can only send a
/// replacement after it has that ack, so the count never runs ahead of the
/// broker's.
fn release(session: &AtomicU64) {
    session.fetch_sub(1, Ordering::AcqRel);
}

/// A manual-ack RabbitMQ consumer.
///
/// Deliveries are acknowledged only after the handler returned
/// [`Outcome::Ack`] (never auto-ack), so a consumer that dies mid-handler
/// gets its messages redelivered. `basic.qos` caps unacknowledged
/// deliveries at [`ConsumerConfig::prefetch`] and is applied again on every
/// reconnect. Delivery is at-least-once: pair the handler with a
/// [`Dedupe`](crate::Dedupe) window when acting twice matters.
///
/// ```no_run
/// use mq_reliable::{ConsumerConfig, Outcome, QueueSpec, ReliableConsumer};
///
/// # async fn demo() -> mq_reliable::Result<()> {
/// let cfg = ConsumerConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f", QueueSpec::classic("orders"));
/// let consumer = ReliableConsumer::start(cfg, |msg| async move {
///     println!("{:?}: {} bytes", msg.id, msg.payload.len());
///     Outcome::Ack
/// })?;
/// // ... later: stop taking messages, finish and ack the ones in hand.
/// let stats = consumer.shutdown().await?;
/// println!("acked {}", stats.acked);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReliableConsumer {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<()>>>,
    counters: Arc<Counters>,
}

impl ReliableConsumer {
    /// Starts consuming with `handler` on the current tokio runtime.
    pub fn start<H, F>(cfg: ConsumerConfig, handler: H) -> Result<ReliableConsumer>
    where
        H: Fn(Incoming) -> F + Send + Sync + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
        cfg.validate()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime("consumer"))?;
        let (stop, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            uri: parse_url(&cfg.url, cfg.heartbeat)?,
            cfg,
            handler: Arc::new(handler),
            counters: Arc::clone(&counters),
            retries: Arc::new(std::sync::Mutex::new(RetryMemory::default())),
        };
        let task = runtime.spawn(worker.run(stop_rx));
        Ok(ReliableConsumer {
            stop,
            task: Some(task),
            counters,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// Deliveries currently held unacknowledged.
    pub fn unacked(&self) -> u64 {
        self.counters.unacked()
    }

    /// A handle that asks the consumer to shut down (from a handler, say).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// Graceful shutdown: cancel the subscription, requeue deliveries not
    /// yet handed to the handler, let running handlers finish and ack, then
    /// close the channel and the connection.
    pub async fn shutdown(mut self) -> Result<ConsumerStats> {
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Waits until the consumer stops (after a [`Stopper::stop`]).
    pub async fn join(&mut self) -> Result<ConsumerStats> {
        if let Some(task) = self.task.take() {
            task.await
                .map_err(|_| Error::Closed("consumer task (it panicked)"))??;
        }
        Ok(self.counters.snapshot())
    }
}

impl Drop for ReliableConsumer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Asks a [`ReliableConsumer`] to shut down gracefully.
#[derive(Debug, Clone)]
pub struct Stopper(watch::Sender<bool>);

impl Stopper {
    /// Requests the shutdown; [`ReliableConsumer::join`] waits for it.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

/// Retry counts by message id, forgetting the oldest beyond a bound.
#[derive(Debug, Default)]
struct RetryMemory {
    counts: HashMap<String, u32>,
    order: VecDeque<String>,
}

impl RetryMemory {
    fn get(&self, key: &str) -> u32 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    fn bump(&mut self, key: &str, cap: usize) -> u32 {
        if let Some(n) = self.counts.get_mut(key) {
            *n += 1;
            return *n;
        }
        if self.order.len() >= cap
            && let Some(old) = self.order.pop_front()
        {
            self.counts.remove(&old);
        }
        self.order.push_back(key.to_owned());
        self.counts.insert(key.to_owned(), 1);
        1
    }

    fn forget(&mut self, key: &str) {
        if self.counts.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

type BoxHandler =
    Arc<dyn Fn(Incoming) -> futures_util::future::BoxFuture<'static, Outcome> + Send + Sync>;

struct Worker<H> {
    cfg: ConsumerConfig,
    uri: lapin::uri::AMQPUri,
    handler: Arc<H>,
    counters: Arc<Counters>,
    retries: Arc<std::sync::Mutex<RetryMemory>>,
}

impl<H, F> Worker<H>
where
    H: Fn(Incoming) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    async fn run(self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let handler: BoxHandler = {
            let h = Arc::clone(&self.handler);
            Arc::new(move |inc| h(inc).boxed())
        };
        let mut backoff = Backoff::new(self.cfg.backoff.clone());
        // One semaphore for the consumer's whole life, not one per session:
        // handlers of a failed session may still be running when the next
        // session starts, and together they must stay within `concurrency`.
        let permits = Arc::new(Semaphore::new(self.cfg.concurrency));
        loop {
            let stop_requested = *stop.borrow();
            if stop_requested {
                return Ok(());
            }
            let delay = backoff.next_delay(rand::random());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(&mut stop) => return Ok(()),
            }
            let session = match self.open().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, queue = %self.cfg.queue.name, "consumer cannot connect");
                    continue;
                }
            };
            self.counters.connections.fetch_add(1, Ordering::Relaxed);
            info!(queue = %self.cfg.queue.name, prefetch = self.cfg.prefetch, "consuming");
            match self
                .consume(session, &handler, &permits, &mut stop, &mut backoff)
                .await
            {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "consumer lost its connection"),
            }
        }
    }

    async fn open(&self) -> Result<(Connection, Channel, lapin::Consumer)> {
        let conn = connect(
            self.uri.clone(),
            &self.cfg.connection_name,
            self.cfg.connect_timeout,
        )
        .await?;
        let setup = async {
            let channel = conn.create_channel().await?;
            // Before consuming, so the broker never floods us.
            channel
                .basic_qos(self.cfg.prefetch, BasicQosOptions { global: false })
                .await?;
            if self.cfg.declare {
                declare_queue(&channel, &self.cfg.queue).await?;
            }
            let consumer = channel
                .basic_consume(
                    short(&self.cfg.queue.name),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: false,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, Error>((channel, consumer))
        };
        let (channel, consumer) = tokio::time::timeout(self.cfg.connect_timeout, setup)
            .await
            .map_err(|_| Error::Timeout {
                what: "opening the consumer channel",
                after: self.cfg.connect_timeout,
            })??;
        Ok((conn, channel, consumer))
    }

    /// Consumes until the connection fails (`Ok(false)`) or a shutdown
    /// completed (`Ok(true)`). After a failure, handlers still running
    /// finish on their own; their acks fail and the broker redelivers
    /// those messages to the next session.
    async fn consume(
        &self,
        (conn, channel, mut consumer): (Connection, Channel, lapin::Consumer),
        handler: &BoxHandler,
        permits: &Arc<Semaphore>,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Result<bool> {
        let session = self.counters.new_session();
        // Deliveries taken from the stream and waiting for a handler slot,
        // in delivery order. Taking them at once keeps the unacked count
        // the broker's (at most the prefetch).
        let mut backlog: VecDeque<Delivery> = VecDeque::new();
        let mut first = true;
        let graceful = loop {
            tokio::select! {
                biased;
                () = stopped(stop) => break true,
                permit = Arc::clone(permits).acquire_owned(), if !backlog.is_empty() => {
                    let (Ok(permit), Some(delivery)) = (permit, backlog.pop_front()) else {
                        break false;
                    };
                    let job = self.job(delivery, Arc::clone(handler), Arc::clone(&session));
                    tokio::spawn(async move {
                        job.await;
                        drop(permit);
                    });
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        if first {
                            backoff.reset();
                            first = false;
                        }
                        self.counters.hold(&session);
                        backlog.push_back(delivery);
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "consumer stream failed");
                        break false;
                    }
                    None => {
                        warn!("consumer cancelled by the broker");
                        break false;
                    }
                },
            }
        };
        if graceful {
            info!(queue = %self.cfg.queue.name, "consumer shutting down");
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            // Deliveries that arrived but were not started go back.
            while let Some(Some(Ok(d))) = consumer.next().now_or_never() {
                self.counters.hold(&session);
                backlog.push_back(d);
            }
            for d in backlog.drain(..) {
                requeue(d, &session).await;
            }
            // Running handlers finish and ack.
            let _ = permits.acquire_many(self.cfg.concurrency as u32).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), channel.close(200, "bye".into()))
                .await;
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
        } else {
            // The channel is gone: the broker requeues these itself.
            for _ in backlog.drain(..) {
                release(&session);
            }
        }
        Ok(graceful)
    }

    /// Runs the handler on one delivery and acks, requeues or rejects it.
    fn job(
        &self,
        mut d: Delivery,
        handler: BoxHandler,
        session: Arc<AtomicU64>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let counters = Arc::clone(&self.counters);
        let retries = Arc::clone(&self.retries);
        let max_retries = self.cfg.max_retries;
        let memory = self.cfg.retry_memory;
        async move {
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            if d.redelivered {
                counters.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned());
            let key = retry_key(id.as_deref(), &d.data);
            let broker_count = delivery_count(&d.properties);
            let prior = broker_count.unwrap_or_else(|| lock(&retries).get(&key));
            let incoming = Incoming {
                id,
                payload: Bytes::from(std::mem::take(&mut d.data)),
                redelivered: d.redelivered,
                retries: prior,
                routing_key: d.routing_key.as_str().to_owned(),
                properties: d.properties.clone(),
            };
            let outcome = match AssertUnwindSafe(handler(incoming)).catch_unwind().await {
                Ok(o) => o,
                Err(_) => {
                    counters.panics.fetch_add(1, Ordering::Relaxed);
                    warn!(key = %key, "handler panicked; treating as Retry");
                    Outcome::Retry
                }
            };
            let outcome = match outcome {
                Outcome::Retry if prior >= max_retries => {
                    counters.poisoned.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mq_reliable_consumer_poisoned_total").increment(1);
                    warn!(key = %key, retries = prior, "retry limit reached: rejecting (poison message)");
                    Outcome::Reject
                }
                o => o,
            };
            release(&session);
            let res = match outcome {
                Outcome::Ack => {
                    lock(&retries).forget(&key);
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mq_reliable_consumer_acks_total").increment(1);
                    d.acker.ack(BasicAckOptions::default()).await
                }
                Outcome::Retry => {
                    if broker_count.is_none() {
                        lock(&retries).bump(&key, memory);
                    }
                    counters.retried.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mq_reliable_consumer_retries_total").increment(1);
                    d.acker
                        .nack(BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        })
                        .await
                }
                Outcome::Reject => {
                    lock(&retries).forget(&key);
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mq_reliable_consumer_rejects_total").increment(1);
                    d.acker
                        .nack(BasicNackOptions {
                            multiple: false,
                            requeue: false,
                        })
                        .await
                }
            };
            if let Err(e) = res {
                // The channel is gone; the broker redelivers the message.
                debug!(error = %e, key = %key, "acknowledgement not sent");
            }
        }
    }
}

/// Hands a delivery that was not started back to the broker.
async fn requeue(d: Delivery, session: &AtomicU64) {
    release(session);
    let _ = d
        .acker
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await;
}

/// Resolves once a shutdown was requested (without holding the watch's
/// read guard across an await).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The key retry counts are kept under: the message id, or (for foreign
/// messages without one) a hash of the payload.
fn retry_key(id: Option<&str>, payload: &[u8]) -> String {
    match id {
        Some(id) => id.to_owned(),
        None => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            payload.hash(&mut h);
            format!("payload:{:016x}", h.finish())
        }
    }
}

/// Quorum queues count deliveries in `x-delivery-count` (absent on the
/// first delivery).
fn delivery_count(props: &BasicProperties) -> Option<u32> {
    let headers = props.headers().as_ref()?;
    let v = headers.inner().get("x-delivery-count")?;
    let n = match v {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        _ => return None,
    };
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_memory_is_bounded_and_counts() {
        let mut m = RetryMemory::default();
        assert_eq!(m.bump("a", 2), 1);
        assert_eq!(m.bump("a", 2), 2);
        assert_eq!(m.bump("b", 2), 1);
        assert_eq!(m.bump("c", 2), 1); // forgets "a"
        assert_eq!(m.get("a"), 0);
        assert_eq!(m.get("b"), 1);
        m.forget("b");
        assert_eq!(m.get("b"), 0);
        assert!(m.order.len() <= 2);
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error_not_a_panic() {
        let e = ReliableConsumer::start(ConsumerConfig::default(), |_| async { Outcome::Ack })
            .unwrap_err();
        assert!(matches!(e, Error::NoRuntime(_)), "{e}");
    }

    #[test]
    fn config_validation_names_fields() {
        ConsumerConfig::default().validate().unwrap();
        let e = ConsumerConfig {
            prefetch: 0,
            ..ConsumerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("prefetch"), "{e}");
        let e = ConsumerConfig {
            prefetch: 4,
            concurrency: 5,
            ..ConsumerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("concurrency"), "{e}");
    }

    #[test]
    fn quorum_delivery_count_is_read() {
        let mut h = FieldTable::default();
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        let p = BasicProperties::default().with_headers(h);
        assert_eq!(delivery_count(&p), Some(3));
        assert_eq!(delivery_count(&BasicProperties::default()), None);
        assert_ne!(retry_key(None, b"x"), retry_key(None, b"y"));
        assert_eq!(retry_key(Some("id"), b"x"), "id");
    }
}
