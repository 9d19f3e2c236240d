//! openraft's async runtime: tokio, except for the random numbers that spread election
//! timeouts, which come from a generator the simulation seeds ([`seed_thread_rng`]), so that a
//! simulated run is reproduced by its seed. Outside a simulation they come from the OS.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioInstant, TokioRuntime};
use rand08::rngs::SmallRng;
use rand08::{Rng, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

/// Make this thread's openraft randomness a deterministic sequence from `seed` (the
/// simulation runs every node on one thread).
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|s| *s.borrow_mut() = Some(SmallRng::seed_from_u64(seed)));
}

/// Back to randomness from the OS.
pub fn unseed_thread_rng() {
    SEEDED.with(|s| *s.borrow_mut() = None);
}

/// A new random id: from the seeded sequence in a simulation (so a seed replays the same
/// topic and cluster ids), else a version 4 UUID.
pub fn new_uuid() -> uuid::Uuid {
    SEEDED.with(|s| match s.borrow_mut().as_mut() {
        Some(seeded) => uuid::Builder::from_random_bytes(seeded.r#gen()).into_uuid(),
        None => uuid::Uuid::new_v4(),
    })
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct HubRuntime;

impl AsyncRuntime for HubRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    /// A generator of its own for each call, drawn from the seeded sequence when there is one.
    fn thread_rng() -> Self::ThreadLocalRng {
        SEEDED.with(|s| match s.borrow_mut().as_mut() {
            Some(seeded) => SmallRng::seed_from_u64(seeded.r#gen()),
            None => SmallRng::from_entropy(),
        })
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}
