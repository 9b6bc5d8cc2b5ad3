//! Thread count of the engine's tensor operations.

/// Runs `f` with `threads` CPU threads for the engine's tensor operations (`None`: all cores).
///
/// candle reads the thread count of its matrix products from `RAYON_NUM_THREADS` on every call, and its other
/// parallel loops use rayon's global pool; both are set here, so call this once, early, before other threads run.
pub fn run_with_threads<T>(threads: Option<usize>, f: impl FnOnce() -> T) -> T {
    if let Some(n) = threads.filter(|&n| n > 0) {
        // SAFETY: called at start-up from the main thread, before the engine spawns any thread that reads the
        // environment.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    f()
}
