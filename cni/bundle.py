"""Build the plugin as one self-contained executable file.

``python3 -m cni.bundle OUT`` writes a Python script, mode 0755, atomically:
a ``#!/usr/bin/env -S python3 -I -S`` line, the ``cni`` package as data and
a few lines that load :mod:`cni.loader` from that data and call its
:func:`~cni.loader.run`. The data is each module's code object compiled by
the building interpreter and all module sources (each marshalled,
zlib-compressed, base64: the interpreter compiles the whole file at every
call, so the less text the better): a
Python whose bytecode format differs from the builder's ignores the
former and compiles the latter. The same sources and builder give the same
file.

A plain script, not a zipapp: running a zip makes the interpreter import
``runpy`` (and with it ``importlib.util``, ``contextlib``, ``collections``,
``functools``) and ``zipimport`` read the archive, which cost more than
the rest of a VERSION call beyond the interpreter's own start.
"""

from __future__ import annotations
import __future__

import ast
import binascii
import importlib.util
import marshal
import os
import sys
import tempfile
import zlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType

# -I: no PYTHON* variables, no user site; -S: no ``site`` at all, so no .pth file of
# the node's Python (some import whole packages at every start) runs before the
# plugin, which needs nothing but the standard library.  ``env -S`` splits the line.
SHEBANG = "#!/usr/bin/env -S python3 -I -S\n"
PACKAGE = "cni"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Build-time only; the plugin never imports this module.
_EXCLUDE = frozenset({"bundle.py"})
# The plugin file's own code: load cni.loader from the data, compiled or from source.
_START = """
if __name__ == "__main__":
    import sys
    from binascii import a2b_base64
    from marshal import loads
    from zlib import decompress

    try:
        from _frozen_importlib_external import MAGIC_NUMBER
    except ImportError:  # not CPython: cni.loader is compiled from its source
        MAGIC_NUMBER = None

    loader = {"__name__": "cni.loader"}
    if MAGIC_NUMBER == MAGIC:
        exec(loads(decompress(a2b_base64(COMPILED["cni.loader"]))), loader)
    else:
        source = loads(decompress(a2b_base64(SOURCES)))["cni.loader"]
        exec(compile(source, __file__ + "/cni/loader.py", "exec"), loader)
    loader["run"](__file__, MAGIC, COMPILED, SOURCES, PACKAGES)
"""


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as stream:
        return stream.read()


def module_sources() -> dict[str, str]:
    """Module name -> source text of the modules the plugin file carries."""
    sources: dict[str, str] = {}
    for name in sorted(os.listdir(_PACKAGE_DIR)):
        if name.endswith(".py") and name not in _EXCLUDE:
            stem = name.removesuffix(".py")
            module = PACKAGE if stem == "__init__" else f"{PACKAGE}.{stem}"
            sources[module] = _read(os.path.join(_PACKAGE_DIR, name))
    return sources


def _base64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _compile(name: str, source: str) -> CodeType:
    """The module's code, its ``from __future__`` imports turned into compiler flags.

    The same code as the source compiles to, but without importing
    ``__future__`` when the module runs: that would be VERSION's only module
    searched on ``sys.path`` (listing the standard library's directories).
    The loader gives each module it loads the plugin file's path as file name.
    """
    tree = ast.parse(source)
    flags = 0
    body: list[ast.stmt] = []
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and statement.module == "__future__":
            for alias in statement.names:
                flags |= getattr(__future__, alias.name).compiler_flag
        else:
            body.append(statement)
    tree.body = body
    code: CodeType = compile(tree, f"{name}.py", "exec", flags=flags, dont_inherit=True)
    return code


def render() -> str:
    """The text of the plugin file."""
    sources = module_sources()
    compiled = {
        name: _base64(zlib.compress(marshal.dumps(_compile(name, source)), 9))
        for name, source in sources.items()
    }
    lines = [
        SHEBANG.rstrip("\n"),
        "# The flannel CNI plugin of pyflannel, written by python3 -m cni.bundle: do not edit.",
        f"MAGIC = {importlib.util.MAGIC_NUMBER!r}",
        f"PACKAGES = frozenset({{{PACKAGE!r}}})",
        "COMPILED = {",
        *(f"    {name!r}: {blob!r}," for name, blob in compiled.items()),
        "}",
        f"SOURCES = {_base64(zlib.compress(marshal.dumps(sources), 9))!r}",
        _START,
    ]
    return "\n".join(lines)


def build(out: str) -> None:
    """Write the executable plugin file to ``out`` (replacing it atomically)."""
    text = render()
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".flannel-bundle-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o755)
        os.replace(temp, out)
    except BaseException:
        os.unlink(temp)
        raise


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python3 -m cni.bundle OUT\n")
        return 2
    build(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
