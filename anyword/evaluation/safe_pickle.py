"""Read a dataset's pickle (RefCOCO's ``refs(unc).p``) without running anything it holds.

A pickle is a program: loading one can call any importable function. The official ``refer.py`` calls
``pickle.load`` on the refs file; here :func:`load_plain_pickle` admits only what plain data needs (lists, dicts,
tuples, strings, bytes, numbers, booleans, ``None``, sets) and refuses every other object before it is built, so a
booby-trapped file is rejected with :class:`UnsafePickleError` and nothing of it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from anyword.errors import AnywordError

# The only globals plain data needs: protocol 0-3 pickles name these to build sets.
_ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}


class UnsafePickleError(AnywordError):
    """The pickle holds something other than plain containers and scalars."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return set if name == "set" else frozenset
        raise UnsafePickleError(
            f"{self.source}: holds a pickled {module}.{name}; only plain lists, dicts, strings and numbers are read "
            "(refused before anything in it ran)"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: holds a persistent reference; only plain data is read")


def load_plain_pickle(path: str | Path):
    """The plain data in the pickle at ``path``; Python 2 byte strings are read as UTF-8 text.

    Raises :class:`UnsafePickleError` for any object other than plain containers and scalars, and
    :class:`AnywordError` for a file that is not a readable pickle.
    """
    path = Path(path)
    with path.open("rb") as file:
        unpickler = _PlainUnpickler(file, encoding="utf-8")
        unpickler.source = str(path)
        try:
            return unpickler.load()
        except UnsafePickleError:
            raise
        except Exception as error:  # any malformed stream: the opcodes above cannot reach code to run
            raise AnywordError(f"{path}: not a readable pickle ({error})") from None
