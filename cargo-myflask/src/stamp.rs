//! Writes the package version into the binary being packaged: myflask
//! keeps a slot for it (src/package_version.rs in myflask), a marker
//! followed by zero bytes, and reports what the slot holds in `/status`.
//! Writing it here, after the build, makes the version the one of the
//! package the binary ships in, and a new revision needs no rebuild.

use std::path::Path;

/// The slot's marker, byte for byte as myflask's `SLOT_MARKER`.
const SLOT_MARKER: &[u8; 32] = b"\0myflask-package-version-slot\0\0\0";
/// The room after the marker, as myflask's `SLOT_ROOM` (NUL-padded).
const SLOT_ROOM: usize = 64;

/// Writes `version` into the slot of the binary at `path` (in place).
pub fn package_version(path: &Path, version: &str) -> Result<(), String> {
    let mut bin = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    write_slot(&mut bin, version)?;
    std::fs::write(path, &bin).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_slot(bin: &mut [u8], version: &str) -> Result<(), String> {
    if version.len() >= SLOT_ROOM {
        return Err(format!(
            "the package version '{version}' is longer than the {} bytes myflask keeps for it",
            SLOT_ROOM - 1
        ));
    }
    let found: Vec<usize> = bin
        .windows(SLOT_MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == SLOT_MARKER)
        .map(|(i, _)| i)
        .collect();
    let at = match found[..] {
        [at] => at + SLOT_MARKER.len(),
        [] => {
            return Err("the binary has no package-version slot: build it on this version of myflask (cargo update -p myflask)".into());
        }
        _ => {
            return Err(format!(
                "the binary has {} package-version slots, not one: it links more than one version of myflask (see cargo tree -d)",
                found.len()
            ));
        }
    };
    let room = bin
        .get_mut(at..at + SLOT_ROOM)
        .ok_or("the binary ends inside its package-version slot")?;
    room.fill(0);
    room[..version.len()].copy_from_slice(version.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_with_slot() -> Vec<u8> {
        let mut b = b"ELF...code...".to_vec();
        b.extend_from_slice(SLOT_MARKER);
        b.extend_from_slice(&[0; SLOT_ROOM]);
        b.extend_from_slice(b"...more");
        b
    }

    #[test]
    fn the_marker_is_myflasks() {
        let src = include_str!("../../src/package_version.rs");
        let literal = String::from_utf8(SLOT_MARKER.to_vec())
            .unwrap()
            .replace('\0', "\\0");
        assert!(src.contains(&format!("b\"{literal}\"")), "marker differs");
        assert!(src.contains(&format!("SLOT_ROOM: usize = {SLOT_ROOM};")));
    }

    #[test]
    fn writes_the_version_after_the_marker() {
        let mut b = binary_with_slot();
        write_slot(&mut b, "0.1.0-2").unwrap();
        let at = 13 + SLOT_MARKER.len();
        assert_eq!(&b[at..at + 8], b"0.1.0-2\0");
        write_slot(&mut b, "0.1-1").unwrap();
        assert_eq!(
            &b[at..at + 8],
            b"0.1-1\0\0\0",
            "an older, longer value is cleared"
        );
        assert!(b.ends_with(b"...more"));
    }

    #[test]
    fn refuses_a_binary_without_one_slot_and_a_long_version() {
        let e = write_slot(&mut b"no slot here".to_vec(), "1-1").unwrap_err();
        assert!(e.contains("no package-version slot"), "{e}");
        let mut two = binary_with_slot();
        two.extend(binary_with_slot());
        assert!(
            write_slot(&mut two, "1-1")
                .unwrap_err()
                .contains("2 package-version slots")
        );
        let long = "1".repeat(SLOT_ROOM);
        assert!(
            write_slot(&mut binary_with_slot(), &long)
                .unwrap_err()
                .contains("longer")
        );
    }
}
