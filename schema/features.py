"""A decision's feature vector: named model inputs, and their packed form on the wire.

On `decisions`, a decision made by the scorer carries its features packed: the values as
little-endian float64 in the order of a named *feature set*, base64 after the set's id
(``"fs-1a2b3c4d5e6f:AAAA..."``). Written out as name/value pairs they were ~2 KB of the ~3 KB
record, and formatting 78 floats as decimal text cost ~7 µs of the ~9 µs that encoding a decision
took (a throwaway timing): the scorer's largest single cost per decision after the feature read
(docs/performance.md). Packed, the record is ~1.4 KB and encodes in ~2 µs, and the values are the
exact float64s the model was given.

A reader never depends on the order by itself: the id is a hash of the set's names in order, and a
packed vector whose set this process does not know is refused, naming ``$.features`` and the id.
Decoded, either form is a read-only mapping (feature name -> value), so readers see no
difference; a record written with names (older records, hand-written ones, fallbacks with a
few context features) still decodes as a dict.
"""

from __future__ import annotations

import binascii
import hashlib
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_F64 = struct.Struct("<d")


class FeatureValues(Mapping[str, float]):
    """What a decision's ``features`` is: any read-only mapping of feature name to value. A plain
    dict is one (registered below); so is :class:`PackedFeatures`."""

    __slots__ = ()


FeatureValues.register(dict)


@dataclass(frozen=True)
class FeatureSet:
    """Feature names in model-input order, under an id derived from them."""

    id: str
    names: tuple[str, ...]
    index: dict[str, int]


_FEATURE_SETS: dict[str, FeatureSet] = {}


def register_feature_set(names: Sequence[str]) -> FeatureSet:
    """The feature set of ``names`` (in this order), known from now on to this process's decoder."""
    names = tuple(names)
    set_id = "fs-" + hashlib.blake2b("\n".join(names).encode(), digest_size=6).hexdigest()
    if set_id not in _FEATURE_SETS:
        _FEATURE_SETS[set_id] = FeatureSet(set_id, names, {n: i for i, n in enumerate(names)})
    return _FEATURE_SETS[set_id]


def feature_set(set_id: str) -> FeatureSet:
    """A registered feature set; ValueError naming the id (and the known ones) if there is none."""
    found = _FEATURE_SETS.get(set_id)
    if found is None:
        # The model's features are declared in streaming.features, which registers them on import;
        # a reader that has not imported it yet (a monitor, a notebook) still decodes.
        import streaming.features  # noqa: F401

        found = _FEATURE_SETS.get(set_id)
    if found is None:
        raise ValueError(f"unknown feature set {set_id!r} (this reader knows {sorted(_FEATURE_SETS)})")
    return found


class PackedFeatures(FeatureValues):
    """Feature values of one payment as float64 bytes in the order of a :class:`FeatureSet`."""

    __slots__ = ("_set", "_raw")

    def __init__(self, features: FeatureSet, raw: bytes) -> None:
        if len(raw) != 8 * len(features.names):
            raise ValueError(
                f"feature set {features.id} has {len(features.names)} values, got {len(raw)} bytes "
                f"({8 * len(features.names)} expected)"
            )
        self._set = features
        self._raw = raw

    @classmethod
    def rows(cls, features: FeatureSet, matrix: np.ndarray) -> list[PackedFeatures]:
        """One vector per row of a (payments x features) float64 matrix: one copy for the batch."""
        if matrix.ndim != 2 or matrix.shape[1] != len(features.names):
            raise ValueError(f"matrix of shape {matrix.shape} for feature set {features.id} of {len(features.names)}")
        raw = np.ascontiguousarray(matrix, dtype="<f8").tobytes()
        width = 8 * matrix.shape[1]
        new = cls.__new__
        out = []
        for start in range(0, len(raw), width):
            row = new(cls)
            row._set, row._raw = features, raw[start : start + width]
            out.append(row)
        return out

    def __getitem__(self, name: str) -> float:
        return _F64.unpack_from(self._raw, 8 * self._set.index[name])[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._set.names)

    def __len__(self) -> int:
        return len(self._set.names)

    def __contains__(self, name: object) -> bool:
        return name in self._set.index

    def __repr__(self) -> str:
        return f"PackedFeatures({self._set.id}, {dict(self)!r})"

    def to_wire(self) -> str:
        return f"{self._set.id}:{binascii.b2a_base64(self._raw, newline=False).decode('ascii')}"

    @classmethod
    def from_wire(cls, text: str) -> PackedFeatures:
        set_id, sep, packed = text.partition(":")
        if not sep:
            raise ValueError("expected a mapping of feature values or '<feature set>:<base64 float64s>'")
        try:
            raw = binascii.a2b_base64(packed, strict_mode=True)
        except binascii.Error as exc:
            raise ValueError(f"packed features are not base64: {exc}") from None
        return cls(feature_set(set_id), raw)


def features_from_wire(value: object) -> FeatureValues:
    """A decision's ``features`` as decoded JSON gave it: a mapping (checked: names to numbers) or
    a packed vector. Raises ValueError or TypeError, which the decoder reports at ``$.features``."""
    if isinstance(value, str):
        return PackedFeatures.from_wire(value)
    if isinstance(value, dict):
        for name, v in value.items():
            if type(v) is not float:
                if type(v) is not int:  # JSON 3 is a float feature value too (bool is not)
                    raise TypeError(f"feature {name!r}: expected a number, got {type(v).__name__}")
                value[name] = float(v)
        return value
    raise TypeError(f"expected a mapping of feature values or a packed vector, got {type(value).__name__}")
