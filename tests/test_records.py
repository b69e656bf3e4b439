"""``protocol.records``: ``to_array_record`` builds the ``Array``s Flower builds, and ``array_like`` decodes what Flower's
``Array.numpy`` decodes, leaving anything unexpected to it."""

import io

import numpy as np
import pytest
from flwr.app import Array

from protocol.records import array_like, to_array_record

REFERENCE = np.arange(12, dtype=np.float32).reshape(3, 4)


def _array_with_bytes(data: bytes, dtype: str = "float32", shape: tuple[int, ...] = (3, 4)) -> Array:
    return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)


def _saved(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("value", [REFERENCE * -0.5, np.full((3, 4), np.nan, dtype=np.float32),
                                   np.float32(3.0) * np.ones((3, 4), dtype=np.float32)])
def test_an_array_saved_like_the_reference_decodes_to_what_flower_decodes(value):
    array = Array(value)
    decoded = array_like(array, REFERENCE)
    np.testing.assert_array_equal(decoded, array.numpy())
    assert decoded.dtype == array.numpy().dtype and decoded.flags.writeable


@pytest.mark.parametrize("value", [REFERENCE.astype(np.float64), REFERENCE.reshape(4, 3), np.asfortranarray(REFERENCE),
                                   REFERENCE.astype(np.int32)])
def test_an_array_unlike_the_reference_decodes_as_flower_decodes_it(value):
    array = Array(value)
    decoded = array_like(array, REFERENCE)
    assert decoded.dtype == value.dtype and decoded.shape == value.shape
    np.testing.assert_array_equal(decoded, value)


def test_declared_metadata_that_lies_about_the_bytes_is_not_believed():
    """The bytes say float64 [3, 4] while the metadata claims the reference's dtype and shape."""
    decoded = array_like(_array_with_bytes(_saved(REFERENCE.astype(np.float64))), REFERENCE)
    assert decoded.dtype == np.float64


@pytest.mark.parametrize("cut", [1, 8, 47])
def test_truncated_bytes_raise_as_flower_raises(cut):
    data = _saved(REFERENCE)[:-cut]
    with pytest.raises(Exception) as ours:
        array_like(_array_with_bytes(data), REFERENCE)
    with pytest.raises(Exception) as flowers:
        _array_with_bytes(data).numpy()
    assert type(ours.value) is type(flowers.value)


def test_extra_bytes_after_the_data_go_to_flower():
    data = _saved(REFERENCE) + b"\0" * 4
    np.testing.assert_array_equal(array_like(_array_with_bytes(data), REFERENCE), _array_with_bytes(data).numpy())


@pytest.mark.parametrize("value", [
    REFERENCE, np.arange(6, dtype=np.float64).reshape(2, 3).T, np.zeros((0, 5), dtype=np.float32),
    np.array([True, False]), np.arange(4, dtype=">i4"), np.zeros(3, dtype=[("a", "<f4"), ("b", "<i2")]),
    np.ones((2, 2, 2), dtype=np.int8), np.array(2.5, dtype=np.float32),
], ids=["float32", "transposed-float64", "empty", "bool", "big-endian", "structured", "int8-3d", "scalar"])
def test_to_array_record_holds_what_flowers_array_holds(value):
    expected = Array(np.ascontiguousarray(value))
    built = to_array_record({"x": value})["x"]
    assert (built.dtype, built.shape, built.stype, built.data) == (expected.dtype, expected.shape, expected.stype,
                                                                   expected.data)
    np.testing.assert_array_equal(built.numpy(), value)
