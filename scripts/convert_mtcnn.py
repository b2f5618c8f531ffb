#!/usr/bin/env python3
"""Converts facenet-pytorch's MTCNN weights (pnet.pt, rnet.pt, onet.pt) to one safetensors
file, on the Python standard library alone (no torch, no NumPy).

The three files are in torch's legacy serialization format (before the zip format of
torch 1.6), which is a run of pickles on one stream followed by raw bytes:

  1. a magic number (int), 2. the protocol version (1001), 3. system information
  (endianness, type sizes), 4. the state dict: an OrderedDict of tensors, each rebuilt by
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, where `storage`
  is a persistent id ('storage', <type>, <key>, <location>, <numel>, <view>) naming a
  storage that has not been read yet, 5. the storage keys in the order they follow,
  6. per storage: its element count (int64, little-endian), then its elements.

A tensor is a strided view of its storage: element [i0, i1, ...] sits at
offset + Σ i_k·stride_k. Several convolution weights here are stored with non-contiguous
strides (conv1.weight of P-Net: shape [10, 3, 3, 3], strides (1, 10, 30, 90)), so the
converter gathers every tensor by its strides into PyTorch's contiguous order.

The output keeps PyTorch's layout (OIHW convolutions, [out, in] dense layers) under the
names `pnet.conv1.weight`, ..., float32, tensors in sorted order with a compact, sorted
header, so the same input always gives the same bytes (the fetch script pins its hash).

Usage: convert_mtcnn.py PNET RNET ONET OUT
"""

import collections
import json
import os
import pickle
import struct
import sys

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# Storage types this converter reads: name → (struct code, bytes per element).
STORAGES = {"FloatStorage": ("f", 4)}


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


class StorageRef:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel = kind, key, numel


def rebuild_tensor_v2(storage, offset, size, stride, *_rest):
    return Tensor(storage, offset, size, stride)


class StateDictUnpickler(pickle.Unpickler):
    """Unpickles only what a state dict of float tensors needs; any other global is an
    error (a pickle can name any callable, so nothing else is trusted)."""

    def __init__(self, f, path):
        super().__init__(f)
        self.path = path

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if module == "torch" and name in STORAGES:
            return name
        raise ValueError(f"{self.path}: unexpected global {module}.{name} in the pickle")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ValueError(f"{self.path}: unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid[:5]
        if pid[5:] not in ((), (None,)):
            raise ValueError(f"{self.path}: storage views are not supported ({pid!r})")
        return StorageRef(kind, key, numel)


def read_legacy(path):
    """The state dict of a legacy-format .pt file: name → (shape, flat float list)."""
    with open(path, "rb") as f:
        u = StateDictUnpickler(f, path)
        magic = u.load()
        if magic != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch file (magic {magic!r})")
        protocol = u.load()
        if protocol != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: legacy protocol {protocol}, expected {LEGACY_PROTOCOL}")
        info = u.load()
        if not info.get("little_endian", False):
            raise ValueError(f"{path}: big-endian file")
        state = u.load()
        keys = u.load()
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            refs = [t.storage for t in state.values() if t.storage.key == key]
            if not refs:
                raise ValueError(f"{path}: storage {key} is not used by any tensor")
            code, width = STORAGES.get(refs[0].kind, (None, None))
            if code is None:
                raise ValueError(f"{path}: storage type {refs[0].kind} is not supported")
            raw = f.read(count * width)
            if len(raw) != count * width:
                raise ValueError(f"{path}: storage {key} truncated ({len(raw)} of {count * width} bytes)")
            storages[key] = struct.unpack(f"<{count}{code}", raw)
        if f.read(1):
            raise ValueError(f"{path}: trailing bytes after the last storage")
    out = collections.OrderedDict()
    for name, t in state.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{path}: {name} is not a tensor")
        out[name] = (t.size, gather(path, name, t, storages[t.storage.key]))
    return out


def gather(path, name, t, flat):
    """The elements of `t` in contiguous (row-major) order, read through its strides."""
    n = 1
    for s in t.size:
        n *= s
    if n and t.offset + sum((s - 1) * st for s, st in zip(t.size, t.stride)) >= len(flat):
        raise ValueError(f"{path}: {name} reaches past its storage")
    out = []
    index = [0] * len(t.size)
    for _ in range(n):
        out.append(flat[t.offset + sum(i * st for i, st in zip(index, t.stride))])
        for axis in reversed(range(len(index))):
            index[axis] += 1
            if index[axis] < t.size[axis]:
                break
            index[axis] = 0
    return out


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        shape, data = tensors[name]
        blob = struct.pack(f"<{len(data)}f", *data)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def main(argv):
    if len(argv) != 5:
        sys.exit(f"usage: {argv[0]} PNET RNET ONET OUT")
    tensors = {}
    for net, path in zip(("pnet", "rnet", "onet"), argv[1:4]):
        for name, value in read_legacy(path).items():
            tensors[f"{net}.{name}"] = value
    write_safetensors(
        argv[4],
        tensors,
        {
            "source": "facenet-pytorch 2.6.0 (PyPI wheel), facenet_pytorch/data/{pnet,rnet,onet}.pt",
            "origin": "MTCNN (Zhang et al. 2016), the authors' released weights as ported by facenet-pytorch",
            "layout": "PyTorch: conv OIHW, dense [out, in]",
        },
    )
    print(f"{argv[4]}: {len(tensors)} tensors")


if __name__ == "__main__":
    main(sys.argv)
