//! Room-stream epochs, interned per room and engine thread, so a connection remembers the
//! epoch of its last `joined` in 2 bytes instead of a string.
//!
//! A rejoin must send back the exact epoch string it was given (`since.epoch`): the server
//! replays only within the same stream, and a `since` from another stream must not match.
//! The server shows its epoch as 16 hex digits, but the protocol only promises a string,
//! so the text is kept as received. A room changes epoch only when the server loses its
//! history (restart, or the room expiring after its last member left), so each room sees
//! one epoch, rarely a few: a connection stores the index of its epoch in its room's list
//! (a *generation*), which fits in the padding its [`Session`](crate::conn::Session)
//! already had, so recovery costs no memory per connection.

/// No epoch known (never joined, or the room's list is full).
pub const NO_EPOCH: u16 = u16::MAX;

/// One engine thread's epochs: for each room, the epochs its connections were given.
#[derive(Debug, Clone, Default)]
pub struct Epochs {
    /// `rooms[r][g]`: epoch text of generation `g` of room `r`.
    rooms: Vec<Vec<Box<str>>>,
}

impl Epochs {
    /// The generation of `epoch` (raw bytes of `joined.epoch`) in `room`, added if new.
    /// [`NO_EPOCH`] when the text is empty, not UTF-8, or the room already has 65,535
    /// generations (a rejoin then asks for no recovery and is counted as not recovered).
    pub fn intern(&mut self, room: u32, epoch: &[u8]) -> u16 {
        let Ok(text) = std::str::from_utf8(epoch) else { return NO_EPOCH };
        if text.is_empty() {
            return NO_EPOCH;
        }
        let r = room as usize;
        if self.rooms.len() <= r {
            self.rooms.resize_with(r + 1, Vec::new);
        }
        let gens = &mut self.rooms[r];
        if let Some(g) = gens.iter().position(|e| &**e == text) {
            return g as u16;
        }
        if gens.len() >= usize::from(NO_EPOCH) {
            return NO_EPOCH;
        }
        gens.push(text.into());
        (gens.len() - 1) as u16
    }

    /// The epoch text of generation `generation` of `room`.
    pub fn get(&self, room: u32, generation: u16) -> Option<&str> {
        self.rooms.get(room as usize)?.get(usize::from(generation)).map(|e| &**e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_interned_per_room() {
        let mut e = Epochs::default();
        assert_eq!(e.intern(3, b"a3f0c2d4e5b61789"), 0);
        assert_eq!(e.intern(3, b"a3f0c2d4e5b61789"), 0);
        assert_eq!(e.intern(3, b"0000000000000001"), 1);
        assert_eq!(e.intern(0, b"0000000000000001"), 0);
        assert_eq!(e.get(3, 1), Some("0000000000000001"));
        assert_eq!(e.get(3, 0), Some("a3f0c2d4e5b61789"));
        assert_eq!(e.get(1, 0), None);
        assert_eq!(e.intern(0, b""), NO_EPOCH);
        assert_eq!(e.intern(0, &[0xff, 0xfe]), NO_EPOCH);
        assert_eq!(e.get(0, NO_EPOCH), None);
    }
}
