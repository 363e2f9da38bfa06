//! Password hashing with argon2id on a bounded pool of its own threads.
//!
//! Hashing is CPU- and memory-heavy on purpose, so it never runs on the async workers: each
//! hash waits for a permit (at most half the cores at once) and then runs on one of the pool's
//! threads, which live as long as the pool, at background priority. A login flood therefore
//! queues here instead of stalling API-key traffic, and the queue is bounded in time: a hash
//! that cannot start within [`MAX_WAIT`] answers 503 with `Retry-After` instead of holding its
//! client until it gives up.
use crate::domain::Invalid;
use crate::error::{Error, ErrorKind};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How long a hash may wait for a slot. A production hash takes about 20 ms of one core, so
/// ten seconds of waiting means hundreds queued, or a host whose cores another process holds:
/// a 503 then tells the client to come back, where an unbounded wait ran into its timeout
/// (30 s for most HTTP clients) with nothing said.
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// The `Retry-After` of a hash that found no slot in time.
const BUSY_RETRY_AFTER_SECONDS: u64 = 5;

pub const MIN_PASSWORD_BYTES: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;

static COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// argon2id cost. Production uses OWASP's first recommendation; tests pass smaller numbers in
/// code (never from the environment, so a deployment cannot be weakened by a stray variable).
#[derive(Debug, Clone, Copy)]
pub struct HashCost {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl HashCost {
    pub const PRODUCTION: HashCost = HashCost {
        m_kib: 19_456,
        t: 2,
        p: 1,
    };
    pub const FAST_FOR_TESTS: HashCost = HashCost {
        m_kib: 256,
        t: 1,
        p: 1,
    };
}

#[derive(Clone)]
pub struct Passwords {
    argon: Arc<Argon2<'static>>,
    permits: Arc<Semaphore>,
    parallel: usize,
    /// Verifications run to the end, for the lockout bound (tests) and future metrics.
    verified: Arc<AtomicU64>,
    /// Verified against when the email is unknown, so the time spent does not tell.
    dummy_hash: Arc<str>,
    /// Hashes waiting for a slot (the metrics' argon2 queue depth).
    waiting: Arc<AtomicU64>,
    /// The longest a hash waits for its slot before the request answers 503.
    max_wait: Duration,
    /// Where the hashes go to run; the pool's threads end once every clone is dropped.
    threads: Sender<HashJob>,
}

type HashJob = Box<dyn FnOnce() + Send>;

/// Counts one waiter while it waits, also when its request is dropped meanwhile.
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Passwords {
    pub fn new(cost: HashCost, parallel: usize) -> Result<Self, Error> {
        let params = Params::new(cost.m_kib, cost.t, cost.p, None)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("bad argon2 parameters: {e}")))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy = super::secret::random_base62(24)?;
        let dummy_hash = hash_with(&argon, &dummy)?;
        let parallel = parallel.max(1);
        Ok(Passwords {
            argon: Arc::new(argon),
            permits: Arc::new(Semaphore::new(parallel)),
            parallel,
            verified: Arc::default(),
            dummy_hash: dummy_hash.into(),
            waiting: Arc::default(),
            max_wait: MAX_WAIT,
            threads: start_threads(parallel)?,
        })
    }

    /// The same pool with another bound on the wait for a slot (tests shorten it).
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Hashes on a background-priority thread; the result is a PHC string.
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        let argon = self.argon.clone();
        self.run(move || hash_with(&argon, &password)).await?
    }

    /// Verifies `password` against `phc`, or against the dummy hash when there is no user.
    /// Always costs one argon2 run.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, Error> {
        self.verify_unless(password, phc, || Ok(())).await
    }

    /// [`verify`](Self::verify), but `gate` is asked once the hash has its slot, right before
    /// it runs: an `Err` from it answers instead. A login checks its lock there, so a lock set
    /// while guesses queued stops them all; at most the pool's size were already running.
    pub async fn verify_unless(
        &self,
        password: String,
        phc: Option<String>,
        gate: impl FnOnce() -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let argon = self.argon.clone();
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy_hash.to_string());
        let _permit = self.permit().await?;
        gate()?;
        let ok = self
            .on_hash_thread(move || {
                PasswordHash::new(&phc)
                    .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        self.verified.fetch_add(1, Ordering::Relaxed);
        Ok(known && ok)
    }

    /// How many verifications have run to the end since start.
    pub fn verifications(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// How many hashes may run at once.
    pub fn parallel(&self) -> usize {
        self.parallel
    }

    /// Hashes waiting for a slot, and hashes running.
    pub fn load(&self) -> (u64, u64) {
        let running = self
            .parallel
            .saturating_sub(self.permits.available_permits());
        (self.waiting.load(Ordering::Relaxed), running as u64)
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(self.max_wait, self.permits.acquire()).await {
            Ok(permit) => permit
                .map_err(|e| Error::new(ErrorKind::Internal, "password pool closed").with_cause(e)),
            Err(_) => {
                tracing::warn!(
                    waited_ms = self.max_wait.as_millis(),
                    "a password hash found no free slot in time; answered 503"
                );
                Err(Error::new(
                    ErrorKind::Unavailable,
                    "too many password checks are waiting; retry shortly",
                )
                .with_retry_after(BUSY_RETRY_AFTER_SECONDS))
            }
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self.permit().await?;
        self.on_hash_thread(job).await
    }

    /// Runs one argon2 job on one of the pool's threads and answers what it returned.
    async fn on_hash_thread<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let failed = || Error::new(ErrorKind::Internal, "password hashing failed");
        let (done, result) = tokio::sync::oneshot::channel();
        self.threads
            .send(Box::new(move || {
                let _ = done.send(job());
            }))
            .map_err(|_| failed().with_cause(std::io::Error::other("the hash threads stopped")))?;
        // A job that panics drops `done` unsent: that is the error here.
        result.await.map_err(|e| failed().with_cause(e))
    }
}

/// Starts the pool's `parallel` threads at background priority (nice 10), so on a busy host
/// the request workers and the store's writer thread win every wake-up against a hash: a hash
/// holds a core for tens of milliseconds and no lock anyone waits on. The threads live as long
/// as the pool, so a login costs no thread start and exit, and each thread's allocator heap is
/// reused instead of abandoned (docs/PERFORMANCE.md, "a thread per hash").
fn start_threads(parallel: usize) -> Result<Sender<HashJob>, Error> {
    let (jobs, queue) = channel::<HashJob>();
    let queue = Arc::new(Mutex::new(queue));
    for n in 0..parallel {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name(format!("password-hash-{n}"))
            .spawn(move || {
                crate::startup::background_priority("password-hash");
                while let Some(job) = next_job(&queue) {
                    // A panicking job answers an error (its sender is dropped unsent); the
                    // thread goes on with the next.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                }
            })
            .map_err(|e| {
                Error::new(ErrorKind::Internal, "password hashing failed").with_cause(e)
            })?;
    }
    Ok(jobs)
}

/// The next job, or `None` once the pool is gone. One thread waits on the queue while the
/// others wait for the lock.
fn next_job(queue: &Mutex<Receiver<HashJob>>) -> Option<HashJob> {
    queue
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .recv()
        .ok()
}

fn hash_with(argon: &Argon2<'_>, password: &str) -> Result<String, Error> {
    argon
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::new(ErrorKind::Internal, format!("password hashing failed: {e}")))
}

/// The password rules: 8 to 1024 bytes, anything allowed, but not a commonly used password.
pub fn check_policy(field: &str, password: &str) -> Result<(), Invalid> {
    let len = password.len();
    if len < MIN_PASSWORD_BYTES {
        return Err(Invalid::new(field, "must be at least 8 bytes long"));
    }
    if len > MAX_PASSWORD_BYTES {
        return Err(Invalid::new(field, "must be at most 1024 bytes long"));
    }
    let lowered = password.to_lowercase();
    if COMMON_PASSWORDS.lines().any(|common| common == lowered) {
        return Err(Invalid::new(
            field,
            "is on the list of commonly used passwords; choose another",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash runs at background priority, below the thread that asked for it, and a job that
    /// panics answers an error. Fails when hashes go back to a pool at the normal priority.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashes_run_below_the_request_threads_priority_and_a_panic_is_an_error() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let caller = nice().unwrap();
        let pw = Passwords::new(HashCost::FAST_FOR_TESTS, 1).unwrap();
        let hashing = pw.on_hash_thread(nice).await.unwrap().unwrap();
        assert!(
            hashing > caller || caller == 19,
            "a hash ran at nice {hashing}, the caller at {caller}"
        );
        let panicked = pw
            .on_hash_thread(|| -> u8 { panic!("argon2 failed") })
            .await;
        assert!(panicked.is_err());
    }

    /// The hashes run on the pool's long-lived threads: two in a row on a one-thread pool run
    /// on the same thread, also after a job that panicked. Fails when each hash gets a thread of
    /// its own again.
    #[actix_web::test]
    async fn hashes_reuse_the_pools_threads_even_after_a_panic() {
        let pw = Passwords::new(HashCost::FAST_FOR_TESTS, 1).unwrap();
        let first = pw.on_hash_thread(|| std::thread::current().id()).await;
        let panicked = pw
            .on_hash_thread(|| -> u8 { panic!("argon2 failed") })
            .await;
        let second = pw.on_hash_thread(|| std::thread::current().id()).await;
        assert!(panicked.is_err());
        assert_eq!(first.unwrap(), second.unwrap());
        assert!(pw.verify("anything".into(), None).await.is_ok());
    }

    #[test]
    fn short_long_and_common_passwords_are_refused() {
        assert!(check_policy("password", "short").is_err());
        assert!(check_policy("password", &"x".repeat(1025)).is_err());
        assert!(check_policy("password", "password123").is_err());
        assert!(check_policy("password", "Password123").is_err());
        assert!(check_policy("password", "correct horse battery staple").is_ok());
        assert!(
            check_policy("password", &"é".repeat(512)).is_ok(),
            "1024 bytes of anything is fine"
        );
    }

    #[actix_web::test]
    async fn hashes_are_argon2id_phc_strings_and_verify_exactly() {
        let pw = Passwords::new(HashCost::FAST_FOR_TESTS, 1).unwrap();
        let phc = pw.hash("Tr0ub4dor&3 ".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"));
        assert!(
            pw.verify("Tr0ub4dor&3 ".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(
            !pw.verify("Tr0ub4dor&3".into(), Some(phc)).await.unwrap(),
            "compared exactly as sent"
        );
        assert!(!pw.verify("anything".into(), None).await.unwrap());
    }

    /// A hash that cannot get a slot within the bound answers 503 with `Retry-After`, never
    /// runs, and leaves the queue gauge at zero; once a slot frees, hashing works again. Fails
    /// when the wait for a slot is unbounded again (the test then hangs past its own timeout).
    #[actix_web::test]
    async fn a_hash_that_waits_too_long_for_a_slot_answers_busy() {
        let pw = Passwords::new(HashCost::FAST_FOR_TESTS, 1)
            .unwrap()
            .with_max_wait(Duration::from_millis(50));
        let held = pw.permits.clone().acquire_owned().await.unwrap();
        let started = std::time::Instant::now();
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            pw.verify_unless("anything".into(), None, || {
                panic!("the gate runs only once a slot is ours")
            }),
        )
        .await
        .expect("the wait for a slot is bounded")
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(refused.kind, ErrorKind::Unavailable);
        assert_eq!(refused.retry_after, Some(5));
        assert_eq!(pw.verifications(), 0, "the refused hash never ran");
        assert_eq!(
            pw.load(),
            (0, 1),
            "nobody waits any more; the held slot runs"
        );
        let also = pw.hash("a password".into()).await.unwrap_err();
        assert_eq!(also.kind, ErrorKind::Unavailable, "hashing is bounded too");
        drop(held);
        assert!(!pw.verify("anything".into(), None).await.unwrap());
        assert_eq!(pw.verifications(), 1);
    }

    #[test]
    fn production_cost_meets_the_owasp_minimum() {
        let c = HashCost::PRODUCTION;
        assert!(c.m_kib >= 19_456 && c.t >= 2 && c.p >= 1);
    }
}
