"""A small ctypes binding to libbpf (``libbpf.so.1``): open/load objects, maps, pins, ids.

Only what CubeVS needs. libbpf >= 1.0 returns NULL/negative errno and sets ``errno`` on error;
every failure here raises :class:`BpfError` carrying the errno and what was being done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
from collections.abc import Iterator
from dataclasses import dataclass

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2


class BpfError(OSError):
    """A libbpf/bpf(2) call failed."""


def _load() -> ctypes.CDLL:
    name = os.environ.get("CUBE_LIBBPF") or "libbpf.so.1"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError as e:  # pragma: no cover - depends on the machine
        raise BpfError(_errno.ENOENT, f"cannot load {name}: install Debian package libbpf1") from e


_lib = _load()
_vp = ctypes.c_void_p
_cp = ctypes.c_char_p


def _sig(name: str, restype, *argtypes) -> None:
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_sig("bpf_object__open_file", _vp, _cp, _vp)
_sig("bpf_object__load", ctypes.c_int, _vp)
_sig("bpf_object__close", None, _vp)
_sig("bpf_object__next_map", _vp, _vp, _vp)
_sig("bpf_object__next_program", _vp, _vp, _vp)
_sig("bpf_object__find_program_by_name", _vp, _vp, _cp)
_sig("bpf_object__find_map_by_name", _vp, _vp, _cp)
_sig("bpf_program__fd", ctypes.c_int, _vp)
_sig("bpf_program__name", _cp, _vp)
_sig("bpf_map__name", _cp, _vp)
_sig("bpf_map__fd", ctypes.c_int, _vp)
_sig("bpf_map__set_pin_path", ctypes.c_int, _vp, _cp)
_sig("bpf_map__unpin", ctypes.c_int, _vp, _cp)
_sig("bpf_map__is_pinned", ctypes.c_bool, _vp)
_sig("bpf_map_update_elem", ctypes.c_int, ctypes.c_int, _vp, _vp, ctypes.c_uint64)
_sig("bpf_map_lookup_elem", ctypes.c_int, ctypes.c_int, _vp, _vp)
_sig("bpf_map_delete_elem", ctypes.c_int, ctypes.c_int, _vp)
_sig("bpf_map_get_next_key", ctypes.c_int, ctypes.c_int, _vp, _vp)
_sig("bpf_obj_get", ctypes.c_int, _cp)
_sig("bpf_obj_get_info_by_fd", ctypes.c_int, ctypes.c_int, _vp, ctypes.POINTER(ctypes.c_uint32))
_sig("bpf_prog_get_fd_by_id", ctypes.c_int, ctypes.c_uint32)
_sig("bpf_map_get_fd_by_id", ctypes.c_int, ctypes.c_uint32)
_sig("libbpf_num_possible_cpus", ctypes.c_int)


def _err(rc: int) -> int:
    """errno of a failed call: libbpf >= 1.0 returns -errno (and sets errno as well)."""
    return -rc if rc != -1 else (ctypes.get_errno() or _errno.EIO)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = _err(rc)
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return rc


def num_possible_cpus() -> int:
    return _check(_lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def obj_id(fd: int) -> int:
    """Kernel id of a program or map fd (``id`` is the second u32 of bpf_{prog,map}_info)."""
    buf = (ctypes.c_uint8 * 256)()
    size = ctypes.c_uint32(ctypes.sizeof(buf))
    _check(_lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)), "bpf_obj_get_info_by_fd")
    return int.from_bytes(bytes(buf[4:8]), "little")


def prog_exists(prog_id: int) -> bool:
    fd = _lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return False
    os.close(fd)
    return True


def map_exists(map_id: int) -> bool:
    fd = _lib.bpf_map_get_fd_by_id(map_id)
    if fd < 0:
        return False
    os.close(fd)
    return True


class Map:
    """A BPF map by fd, with ctypes key/value types; values of per-CPU maps are arrays."""

    def __init__(self, name: str, fd: int, key_type, value_type, per_cpu: bool = False, owns_fd: bool = False):
        self.name = name
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.per_cpu = per_cpu
        self._owns_fd = owns_fd
        self._ncpu = num_possible_cpus() if per_cpu else 1

    def _value_buf(self):
        if self.per_cpu:
            return (self.value_type * self._ncpu)()
        return self.value_type()

    def update(self, key, value, flags: int = BPF_ANY) -> None:
        if self.per_cpu and not isinstance(value, ctypes.Array):
            arr = self._value_buf()
            for i in range(self._ncpu):
                arr[i] = value
            value = arr
        _check(_lib.bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), flags), f"update {self.name}")

    def lookup(self, key):
        """The value, or None when the key is absent."""
        buf = self._value_buf()
        rc = _lib.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(buf))
        if rc < 0:
            if _err(rc) == _errno.ENOENT:
                return None
            _check(rc, f"lookup {self.name}")
        return buf

    def delete(self, key) -> bool:
        """Delete a key; False if it was absent."""
        rc = _lib.bpf_map_delete_elem(self.fd, ctypes.byref(key))
        if rc < 0:
            if _err(rc) == _errno.ENOENT:
                return False
            _check(rc, f"delete {self.name}")
        return True

    def keys(self) -> Iterator:
        """Snapshot of the keys (collected first, so callers may delete while iterating)."""
        out = []
        key = self.key_type()
        prev = None
        while True:
            rc = _lib.bpf_map_get_next_key(self.fd, None if prev is None else ctypes.byref(prev), ctypes.byref(key))
            if rc < 0:
                if _err(rc) == _errno.ENOENT:
                    break
                _check(rc, f"get_next_key {self.name}")
            out.append(key)
            prev = key
            key = self.key_type()
        return iter(out)

    def items(self):
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class LoadedObject:
    """A loaded bpf_object: program fds by name and map fds by name, owned by libbpf."""

    handle: int
    programs: dict[str, int]
    maps: dict[str, int]

    def close(self) -> None:
        """Close libbpf's fds; attached programs and pinned maps live on in the kernel."""
        if self.handle:
            _lib.bpf_object__close(self.handle)
            self.handle = 0


def load_object(path: str, pin_dir: str | None = None) -> LoadedObject:
    """Open and load an object. With ``pin_dir``, every map is pinned there by its name and an
    existing compatible pin is reused (that is how a restarted CubeVS keeps its state)."""
    ctypes.set_errno(0)
    obj = _lib.bpf_object__open_file(path.encode(), None)
    if not obj:
        _check(-1, f"bpf_object__open_file {path}")
    try:
        map_ptrs = []
        m = _lib.bpf_object__next_map(obj, None)
        while m:
            map_ptrs.append(m)
            m = _lib.bpf_object__next_map(obj, m)
        if pin_dir:
            for m in map_ptrs:
                name = _lib.bpf_map__name(m).decode()
                if name.startswith("."):  # .rodata/.bss: per-object, never shared
                    continue
                _check(_lib.bpf_map__set_pin_path(m, os.path.join(pin_dir, name).encode()), f"pin path {name}")
        _check(_lib.bpf_object__load(obj), f"bpf_object__load {os.path.basename(path)}")
        maps = {_lib.bpf_map__name(m).decode(): _lib.bpf_map__fd(m) for m in map_ptrs}
        progs = {}
        p = _lib.bpf_object__next_program(obj, None)
        while p:
            progs[_lib.bpf_program__name(p).decode()] = _check(_lib.bpf_program__fd(p), "bpf_program__fd")
            p = _lib.bpf_object__next_program(obj, p)
        return LoadedObject(handle=obj, programs=progs, maps=maps)
    except BaseException:
        _lib.bpf_object__close(obj)
        raise


def open_pinned(path: str) -> int:
    """fd of a pinned object (caller closes)."""
    ctypes.set_errno(0)
    return _check(_lib.bpf_obj_get(path.encode()), f"bpf_obj_get {path}")
