//! The workspace's one way to print an error with its causes on one line: `what failed: why:
//! why`. Error types say what failed in `Display` and keep the cause in `source()` (never both),
//! so a message is complete only with the chain.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, joined with `": "`.
///
/// ```
/// use berth_api::ErrorChain;
///
/// #[derive(Debug)]
/// struct Open(std::io::Error);
/// impl std::fmt::Display for Open {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("open /data")
///     }
/// }
/// impl std::error::Error for Open {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
///
/// let e = Open(std::io::Error::other("disk full"));
/// assert_eq!(ErrorChain(&e).to_string(), "open /data: disk full");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`ErrorChain`] as a `String`.
pub fn error_chain(e: &dyn Error) -> String {
    ErrorChain(e).to_string()
}
