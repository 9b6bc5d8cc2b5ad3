//! Thread count of the engine's tensor operations.

/// Runs `f` with `threads` CPU threads for the engine's matrix products (`None`: all cores).
///
/// candle reads the thread count of its matrix products from `RAYON_NUM_THREADS` on every call; its element-wise
/// operations run on a separate pool sized by `CANDLE_NUM_THREADS`, whose caller busy-waits for the workers. On a
/// shared machine that spinning cost more than the parallelism gained (SmolLM2 training step 13.5 s -> 7.8 s on
/// 2 threads), so unless `CANDLE_NUM_THREADS` is set, element-wise work stays on the calling thread.
/// Both are environment variables: call this once, early, before other threads run.
pub fn run_with_threads<T>(threads: Option<usize>, f: impl FnOnce() -> T) -> T {
    configure(threads);
    f()
}

/// Sets the thread counts as [`run_with_threads`] describes, for a process whose work runs later (the agent).
/// Call once, at start-up, before any other thread exists.
pub fn configure(threads: Option<usize>) {
    // SAFETY: called at start-up from the main thread, before the engine spawns any thread that reads the
    // environment.
    unsafe {
        if let Some(n) = threads.filter(|&n| n > 0) {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    }
}
