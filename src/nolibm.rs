//! Keeps `libm.so.6` out of the process (feature `libm-free`, on by default).
//!
//! The only libm function a myflask binary calls is `pow`: tokio's
//! multi-threaded scheduler uses `f64::powf` for the moving average of task
//! poll times, which LLVM lowers to a call to the C `pow`. For that one call
//! the dynamic loader would map all of libm, about 0.5 MiB of resident pages
//! in an idle server of about 4 MiB (measured with `/proc/PID/smaps`; the
//! kernel maps file pages around each page touched, 64 KiB at a time).
//!
//! Defining `pow` here resolves that call inside the binary, so the linker
//! (which links with `--as-needed`) drops libm from the binary's `NEEDED`
//! entries. The implementation is the `libm` crate's, a port of musl's,
//! accurate to within 1 ulp; the scheduler needs far less.
//!
//! A binary that links myflask and also defines a `pow` symbol of its own
//! turns the feature off (`default-features = false`).

/// C `pow(x, y)`, for the scheduler's use above (see the module comment).
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_std_on_the_schedulers_inputs() {
        // The scheduler raises 1 - 0.1 to the number of tasks in a batch.
        for n in [1.0, 2.0, 7.0, 61.0, 1000.0] {
            let ours = super::pow(0.9, n);
            let exact = 0.9f64.powi(n as i32);
            assert!(
                (ours - exact).abs() <= exact * 1e-12,
                "{n}: {ours} vs {exact}"
            );
        }
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert!(super::pow(-8.0, 1.0 / 3.0).is_nan());
        assert_eq!(super::pow(0.0, 0.0), 1.0);
    }
}
