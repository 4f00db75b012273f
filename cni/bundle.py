"""Build the plugin as one self-contained executable file.

``python3 -m cni.bundle OUT`` writes a zipapp: a
``#!/usr/bin/env -S python3 -I -S`` line followed by a zip of the ``cni``
package and a ``__main__`` that calls :func:`cni.plugin.main`, mode 0755,
written atomically. Next to every source
file the zip carries unchecked-hash bytecode for the building interpreter,
which zipimport uses instead of compiling (it cannot cache compiled code);
another Python version ignores it and compiles the sources. Entries carry a
fixed timestamp, so the same sources give the same file.
"""

from __future__ import annotations

import os
import py_compile
import sys
import tempfile
import zipfile

# -I: no PYTHON* variables, no user site; -S: no ``site`` at all, so no .pth file of
# the node's Python (some import whole packages at every start) runs before the
# plugin, which needs nothing but the standard library.  ``env -S`` splits the line.
SHEBANG = b"#!/usr/bin/env -S python3 -I -S\n"
MAIN = "import sys\nfrom cni.plugin import main\nsys.exit(main())\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Build-time only; the plugin never imports this module.
_EXCLUDE = frozenset({"bundle.py"})


def _sources() -> dict[str, str]:
    """Archive name -> source text of the plugin's modules and ``__main__``."""
    sources = {"__main__.py": MAIN}
    for name in sorted(os.listdir(_PACKAGE_DIR)):
        if name.endswith(".py") and name not in _EXCLUDE:
            with open(os.path.join(_PACKAGE_DIR, name), encoding="utf-8") as stream:
                sources[f"cni/{name}"] = stream.read()
    return sources


def _bytecode(source: str, name: str, workdir: str) -> bytes:
    source_path = os.path.join(workdir, "module.py")
    compiled_path = os.path.join(workdir, "module.pyc")
    with open(source_path, "w", encoding="utf-8") as stream:
        stream.write(source)
    py_compile.compile(
        source_path,
        cfile=compiled_path,
        dfile=name,
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    with open(compiled_path, "rb") as stream:
        return stream.read()


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.external_attr = 0o644 << 16
    return info


def build(out: str) -> None:
    """Write the executable bundle to ``out`` (replacing it atomically)."""
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".flannel-bundle-")
    try:
        with os.fdopen(fd, "wb") as stream, tempfile.TemporaryDirectory() as workdir:
            stream.write(SHEBANG)
            with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED) as archive:
                for name, source in _sources().items():
                    archive.writestr(_entry(name), source)
                    archive.writestr(_entry(name + "c"), _bytecode(source, name, workdir))
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
