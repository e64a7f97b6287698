//! What systemd-timesyncd's marker says about the system clock (see [`crate::clock`]).

use std::path::Path;

/// Where systemd-timesyncd marks a synchronized clock.
pub const DEFAULT_MARKER: &str = "/run/systemd/timesync/synchronized";

/// The system clock as systemd-timesyncd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockState {
    /// systemd-timesyncd has synchronized the clock.
    Synchronized,
    /// systemd-timesyncd runs but has not synchronized the clock yet.
    NotYet,
    /// No systemd-timesyncd: nothing to ask.
    Unknown,
}

/// What `marker` says about the system clock (see [`crate::clock`]).
pub fn clock_state(marker: &Path) -> ClockState {
    if marker.exists() {
        ClockState::Synchronized
    } else if marker.parent().is_some_and(Path::is_dir) {
        ClockState::NotYet
    } else {
        ClockState::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_and_its_directory_tell_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("timesync").join("synchronized");
        assert_eq!(clock_state(&marker), ClockState::Unknown);
        std::fs::create_dir(dir.path().join("timesync")).unwrap();
        assert_eq!(clock_state(&marker), ClockState::NotYet);
        std::fs::write(&marker, "").unwrap();
        assert_eq!(clock_state(&marker), ClockState::Synchronized);
    }
}
