//! When a trace-triggered window opens and closes (DESIGN.md, "Trace-triggered
//! windows"), as a state machine fed with observations, so it can be tested
//! without a kernel.
//!
//! The window opens the first time the trace is seen: a thread has it as its
//! current context, or a sample carries it. It stays open while any thread
//! serves the trace, and closes once none has for `grace` (requests hop
//! between threads and processes with short gaps), or at `timeout` after the
//! capture started, whichever comes first.

use std::time::{Duration, Instant};

/// Why a window closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The last thread cleared the trace's context and the grace passed.
    Finished,
    /// The timeout passed (the trace may never have come, or still runs).
    Timeout,
    /// The user interrupted the capture.
    Interrupted,
}

/// Where a window stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// The trace has not been seen yet.
    Waiting,
    /// The trace is running (or was seen less than `grace` ago).
    Open,
    Closed(CloseReason),
}

/// Timing of a trace window.
#[derive(Clone, Copy, Debug)]
pub struct WindowConfig {
    pub grace: Duration,
    pub timeout: Duration,
}

/// One trace's window.
#[derive(Debug)]
pub struct TraceWindow {
    config: WindowConfig,
    started: Instant,
    opened: Option<Instant>,
    last_active: Option<Instant>,
    samples: u64,
    closed: Option<CloseReason>,
}

impl TraceWindow {
    pub fn new(config: WindowConfig, now: Instant) -> Self {
        Self {
            config,
            started: now,
            opened: None,
            last_active: None,
            samples: 0,
            closed: None,
        }
    }

    /// Feeds one observation: how many threads serve the trace now, and how
    /// many samples carried it so far (cumulative).
    pub fn observe(&mut self, now: Instant, active_threads: usize, samples: u64) -> WindowState {
        if self.closed.is_none() {
            let new_samples = samples > self.samples;
            self.samples = self.samples.max(samples);
            if active_threads > 0 || new_samples {
                self.opened.get_or_insert(now);
                self.last_active = Some(now);
            }
            if active_threads == 0
                && self
                    .last_active
                    .is_some_and(|t| now.duration_since(t) >= self.config.grace)
            {
                self.closed = Some(CloseReason::Finished);
            } else if now.duration_since(self.started) >= self.config.timeout {
                self.closed = Some(CloseReason::Timeout);
            }
        }
        self.state()
    }

    /// Ends the window now (Ctrl-C).
    pub fn interrupt(&mut self) {
        self.closed.get_or_insert(CloseReason::Interrupted);
    }

    pub fn state(&self) -> WindowState {
        match (self.closed, self.opened) {
            (Some(reason), _) => WindowState::Closed(reason),
            (None, Some(_)) => WindowState::Open,
            (None, None) => WindowState::Waiting,
        }
    }

    /// When the trace was first seen.
    pub fn opened(&self) -> Option<Instant> {
        self.opened
    }

    /// When the trace was last seen running.
    pub fn last_active(&self) -> Option<Instant> {
        self.last_active
    }

    /// Samples that carried the trace.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn window() -> (TraceWindow, Instant) {
        let t0 = Instant::now();
        let w = TraceWindow::new(
            WindowConfig {
                grace: 200 * MS,
                timeout: 10_000 * MS,
            },
            t0,
        );
        (w, t0)
    }

    #[test]
    fn waits_until_the_trace_appears_then_closes_after_the_grace() {
        let (mut w, t0) = window();
        assert_eq!(w.observe(t0 + 50 * MS, 0, 0), WindowState::Waiting);
        assert_eq!(w.observe(t0 + 100 * MS, 1, 0), WindowState::Open);
        assert_eq!(w.opened(), Some(t0 + 100 * MS));
        assert_eq!(w.observe(t0 + 300 * MS, 2, 5), WindowState::Open);
        // Last thread cleared its context: open until the grace has passed.
        assert_eq!(w.observe(t0 + 350 * MS, 0, 7), WindowState::Open);
        assert_eq!(w.observe(t0 + 500 * MS, 0, 7), WindowState::Open);
        assert_eq!(
            w.observe(t0 + 550 * MS, 0, 7),
            WindowState::Closed(CloseReason::Finished)
        );
        assert_eq!(w.last_active(), Some(t0 + 350 * MS));
        assert_eq!(w.samples(), 7);
        // Closed stays closed.
        assert_eq!(
            w.observe(t0 + 600 * MS, 3, 9),
            WindowState::Closed(CloseReason::Finished)
        );
    }

    #[test]
    fn a_gap_shorter_than_the_grace_keeps_it_open() {
        // Nested spans and hand-offs: the context leaves one thread and
        // reaches another within the grace.
        let (mut w, t0) = window();
        w.observe(t0, 1, 0);
        assert_eq!(w.observe(t0 + 150 * MS, 0, 0), WindowState::Open);
        assert_eq!(w.observe(t0 + 190 * MS, 1, 0), WindowState::Open);
        assert_eq!(w.observe(t0 + 380 * MS, 0, 0), WindowState::Open);
        assert_eq!(
            w.observe(t0 + 400 * MS, 0, 0),
            WindowState::Closed(CloseReason::Finished)
        );
    }

    #[test]
    fn samples_alone_open_it() {
        // A span shorter than the poll interval is only seen in samples.
        let (mut w, t0) = window();
        assert_eq!(w.observe(t0 + 100 * MS, 0, 3), WindowState::Open);
        assert_eq!(
            w.observe(t0 + 300 * MS, 0, 3),
            WindowState::Closed(CloseReason::Finished)
        );
    }

    #[test]
    fn times_out_whether_or_not_the_trace_came() {
        let (mut w, t0) = window();
        assert_eq!(
            w.observe(t0 + 10_000 * MS, 0, 0),
            WindowState::Closed(CloseReason::Timeout)
        );
        assert_eq!(w.samples(), 0);
        let (mut w, t0) = window();
        w.observe(t0 + 100 * MS, 1, 1);
        assert_eq!(
            w.observe(t0 + 10_000 * MS, 1, 500),
            WindowState::Closed(CloseReason::Timeout)
        );
        assert_eq!(w.samples(), 500);
    }

    #[test]
    fn interrupt_closes_at_once() {
        let (mut w, t0) = window();
        w.observe(t0, 1, 0);
        w.interrupt();
        assert_eq!(w.state(), WindowState::Closed(CloseReason::Interrupted));
    }
}
