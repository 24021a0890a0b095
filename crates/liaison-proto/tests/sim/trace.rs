//! The last events of a run, kept cheaply (no formatting until a run fails).

use std::collections::VecDeque;

const KEEP: usize = 300;
/// Lines of trace printed for a failing seed.
pub const SHOW: usize = 80;

#[derive(Debug)]
pub struct Trace {
    buf: VecDeque<(u64, u8, &'static str, u64, u64)>,
    /// `LIAISON_SIM_TRACE=1`: print every event as it happens (for one seed).
    live: bool,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            buf: VecDeque::new(),
            live: std::env::var_os("LIAISON_SIM_TRACE").is_some(),
        }
    }
}

impl Trace {
    pub fn add(&mut self, t: u64, node: u8, what: &'static str, a: u64, b: u64) {
        if self.live {
            self.buf.clear();
            self.buf.push_back((t, node, what, a, b));
            eprint!("{}", self.render(1));
            return;
        }
        if self.buf.len() >= KEEP {
            self.buf.pop_front();
        }
        self.buf.push_back((t, node, what, a, b));
    }

    pub fn render(&self, last: usize) -> String {
        let mut out = String::new();
        let skip = self.buf.len().saturating_sub(last);
        for (t, node, what, a, b) in self.buf.iter().skip(skip) {
            let who = match node {
                0 => "alice",
                1 => "bob",
                _ => "world",
            };
            out.push_str(&format!(
                "  {:>3}d{:02}:{:02}:{:02}.{:03} {who:<5} {what} {a} {b}\n",
                t / 86_400_000,
                t / 3_600_000 % 24,
                t / 60_000 % 60,
                t / 1000 % 60,
                t % 1000
            ));
        }
        out
    }
}
