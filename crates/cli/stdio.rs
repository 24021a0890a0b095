//! Writing to stdout and stderr. `println!` panics when the stream is gone (a closed pipe:
//! `liaison --json id | head -c0`), which printed a backtrace and exited 101. Every line this
//! binary prints goes through `outln!` or `errln!` instead: when the reader of
//! stdout or stderr has gone away, the process exits quietly with status 141, what a shell
//! reports for a command ended by `SIGPIPE` (Rust ignores that signal, so the write fails
//! instead). Whatever the command stored before is kept: every store is durable before it is
//! reported.

use std::io::Write;

/// The exit status after a closed pipe (128 + `SIGPIPE`).
pub const BROKEN_PIPE_STATUS: i32 = 141;

/// Which stream to write.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// stdout.
    Out,
    /// stderr.
    Err,
}

/// Writes `args` and a newline to `stream`; on a closed pipe the process exits with
/// [`BROKEN_PIPE_STATUS`]. Other write errors are ignored: there is nowhere left to report
/// them.
pub fn write_line(stream: Stream, args: std::fmt::Arguments<'_>) {
    let r = match stream {
        Stream::Out => {
            let mut o = std::io::stdout().lock();
            o.write_fmt(args).and_then(|()| o.write_all(b"\n"))
        }
        Stream::Err => {
            let mut e = std::io::stderr().lock();
            e.write_fmt(args).and_then(|()| e.write_all(b"\n"))
        }
    };
    if let Err(e) = r
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(BROKEN_PIPE_STATUS);
    }
}

/// `println!` that exits quietly on a closed pipe.
macro_rules! outln {
    () => { $crate::stdio::write_line($crate::stdio::Stream::Out, format_args!("")) };
    ($($t:tt)*) => { $crate::stdio::write_line($crate::stdio::Stream::Out, format_args!($($t)*)) };
}

/// `eprintln!` that exits quietly on a closed pipe.
macro_rules! errln {
    () => { $crate::stdio::write_line($crate::stdio::Stream::Err, format_args!("")) };
    ($($t:tt)*) => { $crate::stdio::write_line($crate::stdio::Stream::Err, format_args!($($t)*)) };
}
