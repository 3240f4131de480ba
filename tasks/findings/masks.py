"""Masks as run lengths over the C-order (slice, row, column) voxels, starting with a run of zeros,
and polygons rasterised to pixel masks; large masks are handled as runs, never as one dense array."""

from __future__ import annotations

import math

import numpy as np

PACKBITS_CHUNK = 1 << 20  # bytes unpacked at a time, so a large mask never exists as one dense array


def rle_encode(mask) -> list[int]:
    """Run lengths of a mask's C-order voxels: alternating, starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel()
    edges = np.flatnonzero(np.diff(np.concatenate(([False], flat, [False])).astype(np.int8)))
    return counts_from_runs(edges[0::2], edges[1::2], flat.size)


def rle_decode(counts, shape) -> np.ndarray:
    """The boolean mask of these run lengths; ValueError unless they are non-negative and fill the shape."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != math.prod(shape):
        raise ValueError(f"run lengths do not fill a mask of shape {tuple(shape)}")
    return np.repeat(np.arange(len(counts)) % 2 == 1, counts).reshape(shape)


def polygon_mask(points, shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres lie inside the polygon (even-odd rule); points are (x, y) pixel coordinates."""
    rows, columns = shape
    mask = np.zeros(shape, dtype=bool)
    xy = np.asarray(points, dtype=np.float64)
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    first, last = max(0, math.floor(y0.min() - 0.5)), min(rows, math.ceil(y0.max()))
    for row in range(first, last):
        centre = row + 0.5
        # Half-open crossing rule (PNPOLY): a vertex on the scanline counts for exactly one of its edges.
        crossing = (y0 > centre) != (y1 > centre)
        if not crossing.any():
            continue
        a, b, c, d = x0[crossing], y0[crossing], x1[crossing], y1[crossing]
        xs = np.sort(a + (centre - b) * (c - a) / (d - b))
        starts = np.clip(np.ceil(xs[0::2] - 0.5), 0, columns).astype(int)
        ends = np.clip(np.ceil(xs[1::2] - 0.5), 0, columns).astype(int)
        for start, end in zip(starts, ends, strict=True):
            mask[row, start:end] = True
    return mask


def shoelace(points: list[tuple[float, float]]) -> float:
    xy = np.asarray(points, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2)


def merge_runs(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if len(starts) < 2:
        return starts, ends
    joined = starts[1:] == ends[:-1]
    return starts[np.concatenate(([True], ~joined))], ends[np.concatenate((~joined, [True]))]


def runs_from_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bounds = np.concatenate(([0], np.cumsum(counts)))
    ones = np.arange(1, len(counts), 2)
    return merge_runs(bounds[ones], bounds[ones + 1])


def runs_from_packbits(packed: bytes, size: int) -> tuple[np.ndarray, np.ndarray]:
    toggles, previous = [], np.uint8(0)
    for offset in range(0, len(packed), PACKBITS_CHUNK):
        bits = np.unpackbits(np.frombuffer(packed[offset:offset + PACKBITS_CHUNK], dtype=np.uint8))
        bits = bits[:max(0, size - offset * 8)]  # numpy.packbits pads the last byte; the pad is not voxels
        if not bits.size:
            break
        toggles.append(np.flatnonzero(np.diff(bits, prepend=previous)) + offset * 8)
        previous = bits[-1]
    if previous:
        toggles.append(np.array([size]))
    edges = np.concatenate(toggles) if toggles else np.zeros(0, dtype=np.int64)
    return edges[0::2].astype(np.int64), edges[1::2].astype(np.int64)


def counts_from_runs(starts: np.ndarray, ends: np.ndarray, size: int) -> list[int]:
    if not len(starts):
        return [int(size)]
    counts = np.empty(2 * len(starts), dtype=np.int64)
    counts[0::2] = starts - np.concatenate(([0], ends[:-1]))
    counts[1::2] = ends - starts
    out = counts.tolist()
    if ends[-1] < size:
        out.append(int(size - ends[-1]))
    return out


def slices_with_voxels(starts: np.ndarray, ends: np.ndarray, slice_size: int, slices: int) -> list[int]:
    delta = np.zeros(slices + 1, dtype=np.int64)
    np.add.at(delta, starts // slice_size, 1)
    np.add.at(delta, (ends - 1) // slice_size + 1, -1)
    return np.flatnonzero(np.cumsum(delta)[:slices] > 0).tolist()


def slice_of_runs(starts: np.ndarray, ends: np.ndarray, k: int, rows: int, columns: int) -> np.ndarray:
    size = rows * columns
    low, high = k * size, (k + 1) * size
    first, last = np.searchsorted(ends, low, side="right"), np.searchsorted(starts, high, side="left")
    delta = np.zeros(size + 1, dtype=np.int32)
    np.add.at(delta, np.clip(starts[first:last], low, high) - low, 1)
    np.add.at(delta, np.clip(ends[first:last], low, high) - low, -1)
    return (np.cumsum(delta[:-1]) > 0).reshape(rows, columns)


