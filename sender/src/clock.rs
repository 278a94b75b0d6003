//! The time the sender signs with: the device's own clock, corrected by
//! what a signed answer of the receiver said about its clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// The device's clock less the receiver's, in seconds: zero until the
/// receiver's signed `clock_skew` refusal said otherwise (PROTOCOL.md,
/// "Wrong device clocks").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    offset: i64,
}

impl Clock {
    /// The clock that makes the device's time read `receiver_time` now.
    pub fn agreeing_with(receiver_time: u64) -> Self {
        Self::agreeing_at(receiver_time, device_now())
    }

    fn agreeing_at(receiver_time: u64, device: i64) -> Self {
        Self { offset: device.saturating_sub(i64::try_from(receiver_time).unwrap_or(i64::MAX)) }
    }

    /// Seconds the device's clock is ahead of the receiver's (negative:
    /// behind); zero when nothing says it is off.
    pub fn offset(self) -> i64 {
        self.offset
    }

    /// The time to sign with, in Unix seconds.
    pub fn now(self) -> u64 {
        self.at(device_now())
    }

    fn at(self, device: i64) -> u64 {
        u64::try_from(device.saturating_sub(self.offset)).unwrap_or(0)
    }
}

/// The device's clock in Unix seconds; before 1970 is negative, as a clock
/// that lost its time may well be.
fn device_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_agreeing_with_the_receiver_signs_with_its_time_from_then_on() {
        let receiver = 1_796_000_000_u64;
        // (device clock when the answer came, the offset it implies)
        let cases = [
            (receiver as i64 - 3 * 3600, -3 * 3600),
            (receiver as i64 + 2 * 86_400, 2 * 86_400),
            (946_684_800, 946_684_800 - receiver as i64),
            (-5, -5 - receiver as i64),
            (receiver as i64, 0),
        ];
        for (device, offset) in cases {
            let clock = Clock::agreeing_at(receiver, device);
            assert_eq!(clock.offset(), offset, "device at {device}");
            assert_eq!(clock.at(device + 7), receiver + 7, "device at {device}: seven seconds later");
        }
        assert_eq!(Clock::default().at(-1), 0, "an uncorrected clock before 1970 signs 0");
    }
}
