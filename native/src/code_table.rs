//! A map keyed by a batch's metric codes, looked up once per event.
//!
//! A batch names a handful of metrics, so a short list compared in order beats hashing each
//! event's code (SipHash was about an eighth of a 1000-event decode). Past a few dozen distinct
//! codes the list gives way to a `HashMap` with the standard, randomly seeded hasher, so a request
//! crafted with many codes costs hashing, never a quadratic scan or chosen collisions.

use std::collections::HashMap;

/// Distinct codes kept in the list before the map takes over.
const LIST_CODES: usize = 32;

pub struct CodeTable<'a, V> {
    list: Vec<(&'a str, V)>,
    map: HashMap<&'a str, usize>,
}

impl<'a, V> Default for CodeTable<'a, V> {
    fn default() -> Self {
        Self { list: Vec::new(), map: HashMap::new() }
    }
}

impl<'a, V> CodeTable<'a, V> {
    /// The value of `code`, if it has one.
    pub fn get(&self, code: &str) -> Option<&V> {
        self.position(code).map(|i| &self.list[i].1)
    }

    /// The value of `code`, given it by `make` first if it has none: one lookup either way.
    pub fn get_or_insert_with(&mut self, code: &'a str, make: impl FnOnce() -> V) -> &V {
        let i = match self.position(code) {
            Some(i) => i,
            None => {
                self.insert(code, make());
                self.list.len() - 1
            }
        };
        &self.list[i].1
    }

    /// Give `code` (which has none yet) its value.
    fn insert(&mut self, code: &'a str, value: V) {
        if self.list.len() >= LIST_CODES {
            self.map.insert(code, self.list.len());
        } else if self.list.len() + 1 == LIST_CODES {
            self.map.extend(self.list.iter().enumerate().map(|(i, (code, _))| (*code, i)));
            self.map.insert(code, self.list.len());
        }
        self.list.push((code, value));
    }

    /// The codes, in the order they were inserted.
    pub fn codes(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.list.iter().map(|(code, _)| *code)
    }

    fn position(&self, code: &str) -> Option<usize> {
        if self.list.len() >= LIST_CODES {
            return self.map.get(code).copied();
        }
        self.list.iter().position(|(known, _)| *known == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_code_before_and_after_the_map_takes_over() {
        let codes: Vec<String> = (0..100).map(|i| format!("metric.{i}")).collect();
        let mut table = CodeTable::default();
        for (i, code) in codes.iter().enumerate() {
            assert_eq!(table.get(code), None);
            table.insert(code, i);
            for (j, known) in codes[..=i].iter().enumerate() {
                assert_eq!(table.get(known), Some(&j));
            }
        }
        assert_eq!(table.get("metric.100"), None);
        assert_eq!(table.get_or_insert_with("metric.7", || unreachable!()), &7);
        assert_eq!(table.get_or_insert_with("metric.100", || 100), &100);
        assert_eq!(table.get("metric.100"), Some(&100));
    }
}
