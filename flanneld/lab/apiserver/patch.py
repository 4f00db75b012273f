"""The three PATCH dialects of the Kubernetes API, for the API server double.

* JSON merge patch (RFC 7386): objects merge, ``null`` deletes, lists replace.
* JSON patch (RFC 6902): a list of add/remove/replace/test/move/copy operations.
* Strategic merge patch: like merge patch, but lists that the API declares
  mergeable merge element-wise on a key (Node ``status.conditions`` on
  ``type``) or as a set (``spec.podCIDRs``); ``$patch: replace|delete``,
  ``$setElementOrder/<list>`` (accepted, order ignored) and
  ``$deleteFromPrimitiveList/<list>`` are understood.  Only the Node paths
  listed in ``NODE_MERGE_KEYS`` are strategic; every other list replaces, as
  for an atomic list.

All functions are pure: they return a new document and never change their
inputs.  They raise :class:`PatchError` for malformed patches.
"""

from __future__ import annotations

import copy
from typing import Any

# path of a list (dotted, from the object root) -> merge key ("" = set of primitives)
NODE_MERGE_KEYS: dict[str, str] = {
    "metadata.ownerReferences": "uid",
    "metadata.finalizers": "",
    "spec.podCIDRs": "",
    "status.conditions": "type",
    "status.addresses": "type",
    "status.volumesAttached": "name",
}


class PatchError(ValueError):
    """The patch document is malformed or a ``test`` operation failed."""


# --- JSON merge patch ---------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- strategic merge patch -----------------------------------------------------------


def strategic_merge_patch(
    target: dict[str, Any], patch: Any, merge_keys: dict[str, str] | None = None
) -> dict[str, Any]:
    """Apply a strategic merge patch to an object."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    keys = NODE_MERGE_KEYS if merge_keys is None else merge_keys
    return _smp_map(target, patch, "", keys)


def _smp_map(target: Any, patch: dict[str, Any], path: str, keys: dict[str, str]) -> dict[str, Any]:
    directive = patch.get("$patch")
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "replace":
        replaced: dict[str, Any] = _strip_directives(body)
        return replaced
    if directive == "delete":
        return {}
    if directive is not None:
        raise PatchError(f"unknown $patch directive {directive!r} at {path or '<root>'}")
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in body.items():
        if key.startswith("$setElementOrder/") or key == "$retainKeys":
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise PatchError(f"{key} needs a list")
            current = result.get(name)
            if isinstance(current, list):
                result[name] = [item for item in current if item not in value]
            continue
        if key.startswith("$"):
            raise PatchError(f"unsupported patch directive {key!r}")
        child = f"{path}.{key}" if path else key
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = _smp_map(result.get(key), value, child, keys)
        elif isinstance(value, list) and child in keys:
            result[key] = _smp_list(result.get(key), value, child, keys)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _smp_list(target: Any, patch: list[Any], path: str, keys: dict[str, str]) -> list[Any]:
    current = copy.deepcopy(target) if isinstance(target, list) else []
    key = keys[path]
    if not key:  # set of primitives
        for item in patch:
            if item not in current:
                current.append(copy.deepcopy(item))
        return current
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"items of {path} need the merge key {key!r}")
        index = next(
            (i for i, old in enumerate(current) if isinstance(old, dict) and old.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del current[index]
        elif index is None:
            current.append(_strip_directives(item))
        else:
            current[index] = _smp_map(current[index], item, path, keys)
    return current


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


# --- JSON patch --------------------------------------------------------------------


def json_patch(target: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise PatchError(f"malformed operation {op!r}")
        kind = op.get("op")
        if kind == "add":
            doc = _add(doc, _pointer(op["path"]), copy.deepcopy(_value(op)))
        elif kind == "remove":
            doc, _ = _remove(doc, _pointer(op["path"]))
        elif kind == "replace":
            doc, _ = _remove(doc, _pointer(op["path"]))
            doc = _add(doc, _pointer(op["path"]), copy.deepcopy(_value(op)))
        elif kind == "test":
            if _get(doc, _pointer(op["path"])) != _value(op):
                raise PatchError(f"test failed at {op['path']}")
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise PatchError(f"{kind} needs 'from'")
            if kind == "move":
                doc, moved = _remove(doc, _pointer(source))
            else:
                moved = copy.deepcopy(_get(doc, _pointer(source)))
            doc = _add(doc, _pointer(op["path"]), moved)
        else:
            raise PatchError(f"unknown operation {kind!r}")
    return doc


def _value(op: dict[str, Any]) -> Any:
    if "value" not in op:
        raise PatchError(f"operation {op.get('op')!r} needs a value")
    return op["value"]


def _pointer(text: str) -> list[str]:
    if text == "":
        return []
    if not text.startswith("/"):
        raise PatchError(f"bad JSON pointer {text!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in text[1:].split("/")]


def _get(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise PatchError(f"path not found: /{'/'.join(parts)}")
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _get(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"bad list index {last!r}")
    else:
        raise PatchError(f"cannot add below a scalar at /{'/'.join(parts)}")
    return doc


def _remove(doc: Any, parts: list[str]) -> tuple[Any, Any]:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _get(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return doc, parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return doc, parent.pop(int(last))
    raise PatchError(f"path not found: /{'/'.join(parts)}")
