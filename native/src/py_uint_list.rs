//! `unimeter_native.UintList`: an immutable list of unsigned 64-bit ints held as one Rust vector.
//!
//! A 1000-event request's offsets went through three Python lists of ints: each partition
//! part's offsets, the request's in request order, and the response encoder reading them back,
//! besides the request indexes of each part. Making and freeing ~2,750 int objects a request
//! was ~5% of the event loop's instructions (`python -m bench.instructions`). The native engine
//! hands these numbers along as `UintList`s instead: a part's offsets (`PartIngest`), its request
//! indexes (`decode_ingest`) and the request's offsets (`request_offsets`), which the response
//! encoder reads in place. To Python code it is a read-only sequence of ints that compares equal
//! to a list or tuple of the same ints (a `collections.abc.Sequence`, registered at import).

use pyo3::exceptions::{PyIndexError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PySequence, PySlice, PyTuple};

#[pyclass(module = "unimeter_native", name = "UintList", frozen, sequence)]
pub struct PyUintList {
    items: Vec<u64>,
}

impl PyUintList {
    pub fn new(items: Vec<u64>) -> Self {
        Self { items }
    }

    pub fn items(&self) -> &[u64] {
        &self.items
    }
}

/// A sequence of unsigned 64-bit ints as a slice: a `UintList`'s read in place, any other's
/// copied (a list's or tuple's item by item, another sequence's through its iterator).
pub enum Uints<'a, 'py> {
    Native(&'a Bound<'py, PyUintList>),
    Copied(Vec<u64>),
}

impl<'a, 'py> Uints<'a, 'py> {
    /// TypeError or OverflowError for an item that is not an unsigned 64-bit int.
    pub fn of(sequence: &'a Bound<'py, PyAny>) -> PyResult<Self> {
        match sequence.cast::<PyUintList>() {
            Ok(list) => Ok(Self::Native(list)),
            Err(_) => Ok(Self::Copied(copied(sequence)?)),
        }
    }

    pub fn items(&self) -> &[u64] {
        match self {
            Self::Native(list) => list.get().items(),
            Self::Copied(items) => items,
        }
    }
}

fn copied(sequence: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    if let Ok(list) = sequence.cast::<PyList>() {
        return list.iter().map(|item| item.extract()).collect();
    }
    if let Ok(tuple) = sequence.cast::<PyTuple>() {
        return tuple.iter().map(|item| item.extract()).collect();
    }
    sequence.cast::<PySequence>()?.try_iter()?.map(|item| item?.extract()).collect()
}

#[pymethods]
impl PyUintList {
    #[new]
    #[pyo3(signature = (items=None))]
    fn py_new(items: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Ok(Self::new(match items {
            Some(items) => Uints::of(items)?.items().to_vec(),
            None => Vec::new(),
        }))
    }

    fn __len__(&self) -> usize {
        self.items.len()
    }

    /// An item (negative indexes count from the end), or a slice of them as a list.
    fn __getitem__<'py>(&self, py: Python<'py>, index: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(slice) = index.cast::<PySlice>() {
            let picked = slice.indices(self.items.len() as isize)?;
            let mut taken = Vec::with_capacity(picked.slicelength);
            let mut at = picked.start;
            for _ in 0..picked.slicelength {
                taken.push(self.items[at as usize]);
                at += picked.step;
            }
            return Ok(PyList::new(py, taken)?.into_any());
        }
        let index: isize = index
            .extract()
            .map_err(|_| PyTypeError::new_err("UintList indices must be integers or slices"))?;
        let n = self.items.len() as isize;
        let at = if index < 0 { index + n } else { index };
        if !(0..n).contains(&at) {
            return Err(PyIndexError::new_err("UintList index out of range"));
        }
        Ok(self.items[at as usize].into_pyobject(py)?.into_any())
    }

    fn __iter__(slf: Bound<'_, Self>) -> UintListIterator {
        UintListIterator { list: slf.unbind(), next: 0 }
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        self.equals(other)
    }

    fn __ne__(&self, other: &Bound<'_, PyAny>) -> bool {
        !self.equals(other)
    }

    fn __repr__(&self) -> String {
        let items: Vec<String> = self.items.iter().map(u64::to_string).collect();
        format!("UintList([{}])", items.join(", "))
    }
}

impl PyUintList {
    /// Equal to another `UintList`, list or tuple of the same ints in the same order (as a list
    /// is to a list); never to anything else.
    fn equals(&self, other: &Bound<'_, PyAny>) -> bool {
        if let Ok(list) = other.cast::<PyUintList>() {
            return list.get().items == self.items;
        }
        let is_plain = other.cast::<PyList>().is_ok() || other.cast::<PyTuple>().is_ok();
        // An item that is no unsigned 64-bit int equals none of ours.
        is_plain && copied(other).is_ok_and(|items| items == self.items)
    }
}

#[pyclass(module = "unimeter_native", name = "UintListIterator")]
pub struct UintListIterator {
    list: Py<PyUintList>,
    next: usize,
}

#[pymethods]
impl UintListIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> Option<u64> {
        let item = self.list.bind(py).get().items.get(self.next).copied();
        self.next += 1;
        item
    }
}
