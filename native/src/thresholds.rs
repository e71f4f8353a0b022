//! Threshold evaluation (`node/aggregation/thresholds.py`) against a period's unfiltered value,
//! after each event. A period's alert state is `[flags, highest multiple alerted per threshold]`:
//! bit i of the flags is set while threshold i is reached; a new period starts from zeros.

#[derive(Clone, Copy, Debug)]
pub struct Threshold {
    pub limit: i64,
    pub recurring: bool,
}

/// The state's length for these thresholds (0 without any).
pub fn state_len(thresholds: &[Threshold]) -> usize {
    if thresholds.is_empty() {
        0
    } else {
        1 + thresholds.len()
    }
}

/// Compare `value` with every threshold, update `state`, and call `fire(threshold, multiple)` for
/// each alert, in threshold order.
pub fn evaluate(
    thresholds: &[Threshold],
    state: &mut [i128],
    value: i128,
    mut fire: impl FnMut(usize, i128),
) {
    let mut flags = state[0];
    for (i, threshold) in thresholds.iter().enumerate() {
        let bit = 1i128 << i;
        let limit = i128::from(threshold.limit);
        if value < limit {
            flags &= !bit; // fell back below: a one-shot threshold re-arms
            continue;
        }
        if threshold.recurring {
            let multiple = value / limit; // both positive here: floor division
            if multiple > state[1 + i] {
                state[1 + i] = multiple;
                fire(i, multiple);
            }
        } else if flags & bit == 0 {
            fire(i, 1);
        }
        flags |= bit;
    }
    state[0] = flags;
}
