"""A frozen, slotted value base without importing :mod:`dataclasses`.

``dataclasses`` pulls in ``inspect`` (and with it ``ast``, ``tokenize``,
``dis``), which costs more than the rest of the plugin's imports together;
the plugin starts once per pod, so its values use this small base instead.
Subclasses list their fields in ``__slots__`` and assign them once in
``__init__`` through :meth:`Record._set`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


class Record:
    """Immutable record: equality, hash and repr over the ``__slots__`` fields."""

    __slots__: tuple[str, ...] = ()

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> Iterator[object]:
        return (getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return tuple(self._values()) == tuple(other._values())

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
