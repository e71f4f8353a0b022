//! `unimeter_native.DedupIndex`: the Python face of `dedup_table::DedupTable`.
//!
//! The same methods, arguments, errors and snapshot list as `node/dedup_index.py`'s `DedupIndex`,
//! so a partition of the native engine uses it in its place and a snapshot either one writes is
//! loaded by the other. Conversion happens here only: lists of ints in, a msgpack-ready list out;
//! the table never sees a Python object.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::capture_buffer::{CaptureBuffer, CapturedBytes};
use crate::dedup_table::{DedupParts, DedupTable, OffsetColumn};
use crate::guarded;
use crate::py_partition_batch::NewKeys;

/// First element of the snapshot list; any other format is refused (recovery replays the log).
const SNAPSHOT_TAG: &str = "dedup-lazy-1";

/// Key digest → offset, for keys whose record arrived within ``window_ns`` (node/dedup_index.py).
#[pyclass(module = "unimeter_native", name = "DedupIndex")]
pub struct PyDedupIndex {
    table: DedupTable,
}

impl PyDedupIndex {
    /// The table, for the batch loop of `py_partition_batch` (which only reads it).
    pub(crate) fn table(&self) -> &DedupTable {
        &self.table
    }

    /// Remember keys found new in a stored record, as arrived at `arrival_ns`.
    pub(crate) fn add_keys(&mut self, arrival_ns: i64, keys: &[u64], offsets: &[u64]) -> PyResult<()> {
        self.table.add(arrival_ns, keys, offsets).map_err(|e| PyValueError::new_err(e.message()))
    }
}

#[pymethods]
impl PyDedupIndex {
    #[new]
    fn new(window_ns: i64) -> Self {
        Self { table: DedupTable::new(window_ns) }
    }

    #[getter]
    fn window_ns(&self) -> i64 {
        self.table.window_ns
    }

    fn __len__(&self) -> usize {
        self.table.len()
    }

    /// Bytes the index holds: its columns as allocated, spare capacity included.
    #[getter]
    fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }

    /// Whether an incremental growth is under way.
    #[getter]
    fn growing(&self) -> bool {
        self.table.growing()
    }

    /// Move the next few thousand slots of a growth under way.
    fn advance_growth(&mut self) -> PyResult<()> {
        guarded(|| {
            self.table.advance_growth();
            Ok(())
        })
    }

    /// The offset stored under ``key``, if it is still in the window.
    fn get(&self, key: u64) -> PyResult<Option<u64>> {
        guarded(|| Ok(self.table.get(key)))
    }

    /// Remember ``keys[i] → offsets[i]`` as arrived at ``arrival_ns``.
    fn add(&mut self, arrival_ns: i64, keys: Vec<u64>, offsets: Vec<u64>) -> PyResult<()> {
        guarded(|| {
            self.table.add(arrival_ns, &keys, &offsets).map_err(|e| PyValueError::new_err(e.message()))
        })
    }

    /// Remember the keys a batch's `dedup_record` found new, as arrived at ``arrival_ns``: `add`
    /// without the keys going through Python lists.
    fn add_new_keys(&mut self, arrival_ns: i64, new_keys: &Bound<'_, NewKeys>) -> PyResult<()> {
        let new_keys = new_keys.get();
        guarded(|| self.add_keys(arrival_ns, &new_keys.keys, &new_keys.offsets))
    }

    /// Forget keys that arrived before ``now_ns - window``; returns how many were forgotten.
    fn expire(&mut self, now_ns: i64) -> PyResult<u64> {
        guarded(|| Ok(self.table.expire(now_ns)))
    }

    /// The snapshot list of ``node.dedup_index.DedupIndex.to_snapshot``, byte for byte, its
    /// columns as read-only ``memoryview``s of one capture (`capture_buffer`: memory kept from
    /// the previous capture, not freshly mapped).
    // `&mut`: like the Python method, it finishes a growth under way; the name is the Python one.
    #[allow(clippy::wrong_self_convention)]
    fn to_snapshot<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        guarded(|| {
            let view = self.table.snapshot_view();
            let len = view.keys.len() * 8
                + view.offs.byte_len()
                + (view.g_arrival.len() + view.g_first.len() + view.g_live.len()) * 8;
            let mut buffer = CaptureBuffer::with_capacity(len);
            let keys = buffer.append(view.keys, u64::to_ne_bytes);
            let offs = match view.offs {
                OffsetColumn::Narrow(v) => buffer.append(v, u32::to_ne_bytes),
                OffsetColumn::Wide(v) => buffer.append(v, u64::to_ne_bytes),
            };
            let g_arrival = buffer.append(view.g_arrival, i64::to_ne_bytes);
            let g_first = buffer.append(view.g_first, u64::to_ne_bytes);
            let g_live = buffer.append(view.g_live, u64::to_ne_bytes);
            let [keys, offs, g_arrival, g_first, g_live]: [_; 5] =
                CapturedBytes::views(py, buffer, &[keys, offs, g_arrival, g_first, g_live])?
                    .try_into()
                    .expect("five columns, five views");
            let items: Vec<Bound<'py, PyAny>> = vec![
                PyString::new(py, SNAPSHOT_TAG).into_any(),
                keys.into_any(),
                PyString::new(py, view.offs.typecode()).into_any(),
                offs.into_any(),
                view.base.into_pyobject(py)?.into_any(),
                g_arrival.into_any(),
                g_first.into_any(),
                g_live.into_any(),
                view.floor.into_pyobject(py)?.into_any(),
                view.last.into_pyobject(py)?.into_any(),
            ];
            PyList::new(py, items)
        })
    }

    /// Rebuild an index saved by ``to_snapshot`` (by either engine); ValueError for anything else.
    #[staticmethod]
    fn from_snapshot(window_ns: i64, data: &Bound<'_, PyAny>) -> PyResult<Self> {
        guarded(|| {
            let parts = parts_from_python(data).map_err(PyValueError::new_err)?;
            let table = DedupTable::from_parts(window_ns, parts).map_err(PyValueError::new_err)?;
            Ok(Self { table })
        })
    }
}

/// A packed column (``array.tobytes()``) back into values, refusing a length that is not whole items.
fn column<T, const N: usize>(
    raw: &Bound<'_, PyAny>,
    from_bytes: fn([u8; N]) -> T,
) -> Result<Vec<T>, &'static str> {
    const BAD: &str = "dedup snapshot: bad packed array";
    // Any contiguous bytes: `bytes` read back from a file, or a capture's `memoryview`s.
    let buffer = PyBuffer::<u8>::get(raw).map_err(|_| BAD)?;
    if !buffer.is_c_contiguous() {
        return Err(BAD);
    }
    // SAFETY: the export keeps the bytes alive and unresizable while `buffer` lives (to the end
    // of this function), and nothing writes a snapshot's columns while they are read.
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts(buffer.buf_ptr().cast::<u8>(), buffer.len_bytes()) };
    if bytes.len() % N != 0 {
        return Err(BAD);
    }
    Ok(bytes.chunks_exact(N).map(|c| from_bytes(c.try_into().expect("chunk of N bytes"))).collect())
}

/// The checks of ``DedupIndex.from_snapshot``, with its messages, in its order.
fn parts_from_python(data: &Bound<'_, PyAny>) -> Result<DedupParts, &'static str> {
    const NOT_OURS: &str = "dedup snapshot: not this version's format";
    let list = data.cast::<PyList>().map_err(|_| NOT_OURS)?;
    if list.len() != 10
        || list.get_item(0).ok().and_then(|t| t.extract::<String>().ok()).as_deref() != Some(SNAPSHOT_TAG)
    {
        return Err(NOT_OURS);
    }
    let item = |i: usize| list.get_item(i).expect("index below the checked length");
    let wide = match item(2).extract::<String>().ok().as_deref() {
        Some("I") => false,
        Some("Q") => true,
        _ => return Err("dedup snapshot: bad offset column type"),
    };
    let keys = column(&item(1), u64::from_ne_bytes)?;
    let offs = if wide {
        OffsetColumn::Wide(column(&item(3), u64::from_ne_bytes)?)
    } else {
        OffsetColumn::Narrow(column(&item(3), u32::from_ne_bytes)?)
    };
    let g_arrival = column(&item(5), i64::from_ne_bytes)?;
    let g_first = column(&item(6), u64::from_ne_bytes)?;
    let g_live = column(&item(7), u64::from_ne_bytes)?;
    let int = |i: usize| item(i).extract::<u64>().map_err(|_| "dedup snapshot: bad base or floor");
    // Sizes are checked by DedupTable::from_parts, before base and floor, as in Python.
    let (base, floor, last) = (int(4), int(8), int(9));
    let parts = |base, floor, last| DedupParts { keys, offs, base, g_arrival, g_first, g_live, floor, last };
    match (base, floor, last) {
        (Ok(base), Ok(floor), Ok(last)) => Ok(parts(base, floor, last)),
        // A base, floor or last that is no u64 fails the range check whatever the sizes say;
        // a zero floor makes from_parts report it after the size checks.
        _ => Ok(parts(0, 0, 0)),
    }
}
