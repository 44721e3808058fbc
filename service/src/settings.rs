//! Startup checks both binaries apply to their settings: the one range check of every
//! duration and size, and reading a secret from a file. Errors are the one-line messages the
//! binaries print before exiting 64.

use std::path::Path;
use std::time::Duration;

/// The longest any duration setting may be (one year): deadlines are `Instant + d`, and
/// nothing here waits longer; larger values are refused at startup, not overflowed later.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The largest count any "most …" setting may be.
pub const MAX_COUNT: usize = 10_000_000;

/// A duration or size setting, printable in its flag's own syntax.
pub trait Setting: PartialOrd + Copy {
    /// The value as an operator would write it.
    fn show(self) -> String;
}

impl Setting for Duration {
    fn show(self) -> String {
        humantime::format_duration(self).to_string()
    }
}

impl Setting for usize {
    fn show(self) -> String {
        self.to_string()
    }
}

impl Setting for u32 {
    fn show(self) -> String {
        self.to_string()
    }
}

/// The one range check of every duration and size setting: `min <= value <= max`, else the
/// one-line startup error (exit 64) naming `flag`.
pub fn check_range<T: Setting>(flag: &str, value: T, min: T, max: T) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!(
            "{flag} must be between {} and {} (got {})",
            min.show(),
            max.show(),
            value.show()
        ));
    }
    Ok(())
}

/// Reads the file of `flag`.
pub fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// Reads a secret from the file of `flag`: trailing newlines trimmed, empty refused.
pub fn read_secret(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = read_file(flag, path)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{flag} {}: the file is empty", path.display()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_range_is_inclusive_and_names_the_flag() {
        let s = Duration::from_secs;
        assert!(check_range("--x", s(1), s(1), s(2)).is_ok());
        assert!(check_range("--x", s(2), s(1), s(2)).is_ok());
        assert_eq!(
            check_range("--x", s(3), s(1), s(2)).unwrap_err(),
            "--x must be between 1s and 2s (got 3s)"
        );
        assert_eq!(
            check_range("--n", 0usize, 1, 5).unwrap_err(),
            "--n must be between 1 and 5 (got 0)"
        );
        assert_eq!(
            check_range("--n", 7u32, 1, 5).unwrap_err(),
            "--n must be between 1 and 5 (got 7)"
        );
    }

    #[test]
    fn secrets_lose_trailing_newlines_and_may_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("conflist-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, "k3y\r\n\n").unwrap();
        assert_eq!(read_secret("--s", &f).unwrap(), b"k3y");
        std::fs::write(&f, "\n").unwrap();
        assert!(
            read_secret("--s", &f)
                .unwrap_err()
                .ends_with("the file is empty")
        );
        assert!(
            read_secret("--s", &dir.join("missing"))
                .unwrap_err()
                .starts_with("--s ")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
