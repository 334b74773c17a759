//! The version of the Debian package a binary was shipped in, as `/status`
//! reports it beside the crate's version.
//!
//! The binary carries a slot for it: [`SLOT_MARKER`] followed by
//! [`SLOT_ROOM`] zero bytes. `cargo myflask deb` writes the package version
//! (`<upstream>-<revision>`, NUL-padded) into the slot of the binary it
//! packages, after building it, so the version is the one of the package
//! the binary came in, and changing it (`--revision`) needs no rebuild.
//! A binary that was not packaged that way has an empty slot: no package
//! version.

/// The bytes that start the slot; `cargo myflask deb` finds the slot by
/// them (they must occur once in the binary).
pub const SLOT_MARKER: &[u8; 32] = b"\0myflask-package-version-slot\0\0\0";
/// Room for the version after the marker, NUL-padded (so at most
/// `SLOT_ROOM - 1` bytes of version).
pub const SLOT_ROOM: usize = 64;

const SLOT_LEN: usize = SLOT_MARKER.len() + SLOT_ROOM;

const fn empty_slot() -> [u8; SLOT_LEN] {
    let mut s = [0u8; SLOT_LEN];
    let mut i = 0;
    while i < SLOT_MARKER.len() {
        s[i] = SLOT_MARKER[i];
        i += 1;
    }
    s
}

#[used]
static SLOT: [u8; SLOT_LEN] = empty_slot();

/// The package version written into this binary, if any.
pub fn get() -> Option<&'static str> {
    static VERSION: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| parse(&read_slot())).as_deref()
}

/// The slot as it is in memory, not as the compiler knows it: the compiler
/// sees zeros, the packaged file has the version.
fn read_slot() -> [u8; SLOT_LEN] {
    // SAFETY: SLOT is a live, aligned static; a volatile read of it is an
    // ordinary read that the compiler may not fold into the constant.
    unsafe { std::ptr::read_volatile(&SLOT) }
}

/// The version in a slot: the bytes after the marker up to the first NUL,
/// if they are a non-empty version string.
fn parse(slot: &[u8]) -> Option<String> {
    let room = slot.get(SLOT_MARKER.len()..)?;
    let end = room.iter().position(|&b| b == 0).unwrap_or(room.len());
    let v = std::str::from_utf8(&room[..end]).ok()?;
    let valid = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~-:".contains(&b));
    valid.then(|| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_with(version: &[u8]) -> Vec<u8> {
        let mut s = empty_slot().to_vec();
        s[SLOT_MARKER.len()..SLOT_MARKER.len() + version.len()].copy_from_slice(version);
        s
    }

    #[test]
    fn an_unpackaged_binary_has_no_package_version() {
        assert_eq!(get(), None);
        assert_eq!(parse(&empty_slot()), None);
    }

    #[test]
    fn a_written_slot_gives_the_version() {
        assert_eq!(parse(&slot_with(b"0.1.0-1")).as_deref(), Some("0.1.0-1"));
        assert_eq!(
            parse(&slot_with(b"1:2.0~rc1-3+b1")).as_deref(),
            Some("1:2.0~rc1-3+b1")
        );
    }

    #[test]
    fn garbage_in_the_slot_is_no_version() {
        assert_eq!(parse(&slot_with(b"0.1 0")), None);
        assert_eq!(parse(&slot_with(&[0xff, b'1'])), None);
    }

    #[test]
    fn the_marker_is_the_slot_start() {
        assert!(SLOT.starts_with(SLOT_MARKER));
        assert_eq!(SLOT.len(), SLOT_MARKER.len() + SLOT_ROOM);
    }
}
