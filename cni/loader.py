"""Serving the ``cni`` package from the single-file plugin (see :mod:`cni.bundle`).

The plugin file carries every module of the package as data; its few lines
of code run this module's :func:`run`, which puts a :class:`BundleImporter`
first on ``sys.meta_path`` and calls the plugin. Modules come from bytecode
compiled at build time for the building interpreter, unpacked only when a
command imports them, or, under a Python with another bytecode format, from
their sources, compiled as they are imported. Nothing here imports more
than the interpreter has already loaded at start-up: ``runpy``,
``zipimport`` of a zipapp and the ``importlib`` package cost more than the
whole VERSION call.
"""

from __future__ import annotations

import _imp
import binascii
import marshal
import sys
import zlib

try:  # importlib's core, which CPython loads at start-up (unlike the importlib package)
    from _frozen_importlib import ModuleSpec as _ModuleSpec
    from _frozen_importlib_external import MAGIC_NUMBER
except ImportError:  # another implementation: the same names, at their import's cost
    from importlib.machinery import ModuleSpec as _ModuleSpec
    from importlib.util import MAGIC_NUMBER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from importlib.abc import Loader as _LoaderBase
    from importlib.machinery import ModuleSpec
    from types import CodeType, ModuleType
    from typing import NoReturn
else:
    _LoaderBase = object


class BundleImporter(_LoaderBase):
    """Finder and loader of the bundled modules (a ``sys.meta_path`` entry).

    ``compiled`` maps a module name to its marshalled code object, zlib
    compressed and base64 encoded, valid for the interpreter whose bytecode
    ``magic`` it carries; ``sources`` is the same encoding of a dict from
    module name to source text (read only without matching bytecode, and for
    tracebacks). ``packages`` names the modules that are packages.
    """

    __slots__ = ("_compiled", "_location", "_packages", "_source_blob", "_sources")

    def __init__(
        self,
        location: str,
        magic: bytes,
        compiled: Mapping[str, str],
        sources: str,
        packages: frozenset[str],
    ) -> None:
        self._location = location
        usable = magic == MAGIC_NUMBER
        self._compiled: Mapping[str, str] = compiled if usable else {}
        self._source_blob = sources
        self._sources: dict[str, str] | None = None
        self._packages = packages

    def _all_sources(self) -> dict[str, str]:
        if self._sources is None:
            sources: dict[str, str] = marshal.loads(_unpack(self._source_blob))
            self._sources = sources
        return self._sources

    def _filename(self, name: str) -> str:
        tail = "/__init__.py" if name in self._packages else ".py"
        return f"{self._location}/{name.replace('.', '/')}{tail}"

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in (self._compiled or self._all_sources()):
            return None
        spec: ModuleSpec = _ModuleSpec(
            fullname,
            self,
            origin=self._filename(fullname),
            is_package=fullname in self._packages,
        )
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        exec(self.get_code(module.__name__), module.__dict__)  # noqa: S102 - our own code

    def get_code(self, fullname: str) -> CodeType:
        blob = self._compiled.get(fullname)
        if blob is None:
            source = self.get_source(fullname)
            return compile(source, self._filename(fullname), "exec", dont_inherit=True)
        code: CodeType = marshal.loads(_unpack(blob))
        # Tracebacks name the plugin file; linecache then asks get_source for the lines.
        _imp._fix_co_filename(code, self._filename(fullname))  # type: ignore[attr-defined]
        return code

    def get_source(self, fullname: str) -> str:
        """The module's source (``linecache`` asks for it to print a traceback)."""
        return self._all_sources()[fullname]


def _unpack(blob: str) -> bytes:
    return zlib.decompress(binascii.a2b_base64(blob))


def run(
    location: str,
    magic: bytes,
    compiled: Mapping[str, str],
    sources: str,
    packages: frozenset[str],
) -> NoReturn:
    """Put the bundle's importer first on ``sys.meta_path``; serve the call and exit."""
    sys.meta_path.insert(0, BundleImporter(location, magic, compiled, sources, packages))
    from cni.plugin import main

    main()
