"""Tests of model.torch_weights: PyTorch state dicts read without torch, hostile files refused.

The checkpoints are written here by hand, byte for byte as ``torch.save`` writes them: a
protocol 2 pickle naming the same globals torch names (``torch._utils._rebuild_tensor_v2``,
``torch.FloatStorage``, ``collections.OrderedDict``), storages as persistent ids, and the
storage bytes in a zip archive (``archive/data/<key>``) or after the pickles (legacy format).
"""

import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from model.errors import ModelError
from model.torch_weights import read_state_dict

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_TYPES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


def op_global(module: str, name: str) -> bytes:
    """GLOBAL opcode: push ``module.name``."""
    return b"c" + f"{module}\n{name}\n".encode()


def op(value: object) -> bytes:
    """Protocol 2 opcodes pushing a str, int, bool, None or tuple of those."""
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)
    if isinstance(value, str):
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(value, tuple):
        return b"(" + b"".join(op(item) for item in value) + b"t"
    raise TypeError(value)


def ordered_dict() -> bytes:
    """Opcodes building an empty collections.OrderedDict."""
    return op_global("collections", "OrderedDict") + b")R"


def tensor_ops(
    key: str, storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> bytes:
    """Opcodes of ``_rebuild_tensor_v2(storage key, offset, size, stride, False, {})``."""
    storage_type = op_global("torch", STORAGE_TYPES[storage.dtype])
    persistent_id = b"(" + op("storage") + storage_type + op(key) + op("cpu")
    persistent_id += op(int(storage.size)) + b"tQ"
    arguments = persistent_id + op(offset) + op(size) + op(stride) + op(False) + ordered_dict()
    return op_global("torch._utils", "_rebuild_tensor_v2") + b"(" + arguments + b"tR"


Tensor = tuple[str, str, np.ndarray, int, tuple[int, ...], tuple[int, ...]]

# name, storage key, storage, offset, size, stride
STORAGE_0 = np.arange(8, dtype="float32") / 4
STORAGE_1 = np.array([7], dtype="int64")
TENSORS: list[Tensor] = [
    ("conv.weight", "0", STORAGE_0, 0, (2, 3), (3, 1)),
    ("conv.weight_t", "0", STORAGE_0, 1, (3, 2), (1, 3)),  # a transposed view, offset 1
    ("bn.num_batches_tracked", "1", STORAGE_1, 0, (), ()),
]
EXPECTED = {
    "conv.weight": STORAGE_0[:6].reshape(2, 3),
    "conv.weight_t": STORAGE_0[1:7].reshape(2, 3).T,
    "bn.num_batches_tracked": np.array(7, dtype="int64"),
}


def state_dict_pickle(tensors: list[Tensor]) -> bytes:
    """A protocol 2 pickle of an OrderedDict of tensors, as torch.save writes it."""
    items = b"".join(
        op(name) + tensor_ops(key, storage, offset, size, stride)
        for name, key, storage, offset, size, stride in tensors
    )
    return b"\x80\x02" + ordered_dict() + b"(" + items + b"u."


def storages_of(tensors: list[Tensor]) -> dict[str, np.ndarray]:
    """The storages the tensors use, by key, in first-use order."""
    return {key: storage for _, key, storage, *_ in tensors}


def write_zip(path: Path, data_pkl: bytes, storages: dict[str, np.ndarray]) -> Path:
    """Write a zip-format checkpoint: archive/data.pkl, archive/data/<key>, version, byteorder."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, storage in storages.items():
            little_endian = storage.astype(storage.dtype.newbyteorder("<"))
            archive.writestr(f"archive/data/{key}", little_endian.tobytes())
        archive.writestr("archive/version", "3\n")
    return path


def write_legacy(path: Path, state_pkl: bytes, storages: dict[str, np.ndarray]) -> Path:
    """Write a legacy checkpoint: magic, protocol, sys info, state, keys, then the storages."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 4}}
    parts = [pickle.dumps(value, protocol=2) for value in (LEGACY_MAGIC, 1001, sys_info)]
    parts += [state_pkl, pickle.dumps(list(storages), protocol=2)]
    for storage in storages.values():
        parts.append(struct.pack("<q", storage.size) + storage.tobytes())
    path.write_bytes(b"".join(parts))
    return path


def checkpoint(tmp_path: Path, fmt: str, tensors: list[Tensor] = TENSORS) -> Path:
    """A checkpoint of ``tensors`` in format ``fmt`` ("zip" or "legacy")."""
    write = write_zip if fmt == "zip" else write_legacy
    return write(tmp_path / f"{fmt}.pth", state_dict_pickle(tensors), storages_of(tensors))


def assert_same(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> None:
    """Same names, dtypes, shapes and values."""
    assert list(expected) == list(actual)
    for name, array in expected.items():
        assert (array.dtype, array.shape) == (actual[name].dtype, actual[name].shape)
        np.testing.assert_array_equal(array, actual[name])


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
class TestReadsCheckpoints:
    """read_state_dict on well-formed checkpoints of both formats."""

    def test_tensors_come_back_with_their_values(self, tmp_path: Path, fmt: str) -> None:
        """Every tensor comes back by name, with its dtype, shape, stride and offset applied."""
        assert_same(EXPECTED, read_state_dict(checkpoint(tmp_path, fmt)))

    def test_arrays_are_writable_copies(self, tmp_path: Path, fmt: str) -> None:
        """The arrays own their memory: changing one leaves the others as they were."""
        arrays = read_state_dict(checkpoint(tmp_path, fmt))
        arrays["conv.weight"][:] = -1
        np.testing.assert_array_equal(EXPECTED["conv.weight_t"], arrays["conv.weight_t"])


class TestRefusesBadFiles:
    """read_state_dict raises ModelError, naming the file, for anything else."""

    @pytest.mark.parametrize("fmt", ["zip", "legacy"])
    @pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.99])
    def test_truncated_file(self, tmp_path: Path, fmt: str, keep: float) -> None:
        """A checkpoint cut short anywhere raises ModelError."""
        path = checkpoint(tmp_path, fmt)
        content = path.read_bytes()
        path.write_bytes(content[: int(len(content) * keep)])
        with pytest.raises(ModelError, match=re.escape(str(path))):
            read_state_dict(path)

    @pytest.mark.parametrize("fmt", ["zip", "legacy"])
    def test_foreign_global_is_refused_and_not_run(self, tmp_path: Path, fmt: str) -> None:
        """A pickle calling os.system raises ModelError naming the global, and runs nothing."""
        marker = tmp_path / "pwned"
        payload = b"\x80\x02" + op_global("os", "system") + op((f"touch {marker}",)) + b"R."
        write = write_zip if fmt == "zip" else write_legacy
        path = write(tmp_path / "evil.pth", payload, {})
        with pytest.raises(ModelError, match=r"refusing global os\.system"):
            read_state_dict(path)
        assert not marker.exists()

    def test_foreign_global_inside_a_tensor_is_refused(self, tmp_path: Path) -> None:
        """A global hidden among real tensors (builtins.eval) raises ModelError too."""
        evil = op("x") + op_global("builtins", "eval") + op(("1",)) + b"R"
        data_pkl = state_dict_pickle(TENSORS)[:-2] + evil + b"u."
        path = write_zip(tmp_path / "evil.pth", data_pkl, storages_of(TENSORS))
        with pytest.raises(ModelError, match=r"refusing global builtins\.eval"):
            read_state_dict(path)

    @pytest.mark.parametrize(
        "target", [("torch", "FloatStorage"), ("torch._utils", "_rebuild_tensor_v2")]
    )
    @pytest.mark.parametrize("slot_state", [False, True], ids=["dict-state", "slot-state"])
    def test_build_cannot_tamper_with_the_reader(
        self, tmp_path: Path, target: tuple[str, str], slot_state: bool
    ) -> None:
        """A pickle that BUILDs onto a stand-in raises ModelError; later files read as before."""
        state = b"}" + op("dtype") + op("O") + b"s"
        if slot_state:
            state = b"(N" + state + b"t"
        payload = b"\x80\x02" + op_global(*target) + state + b"b."
        with pytest.raises(ModelError, match=r"evil\.pth.*refusing to set the state"):
            read_state_dict(write_zip(tmp_path / "evil.pth", payload, {}))
        assert_same(EXPECTED, read_state_dict(checkpoint(tmp_path, "zip")))

    def test_ordinary_pickle_is_not_a_checkpoint(self, tmp_path: Path) -> None:
        """A pickled plain dict (no magic number) raises ModelError."""
        path = tmp_path / "plain.pth"
        path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
        with pytest.raises(ModelError, match="not a torch checkpoint"):
            read_state_dict(path)

    def test_random_bytes(self, tmp_path: Path) -> None:
        """Bytes that are neither a zip nor a pickle raise ModelError."""
        path = tmp_path / "noise.pth"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype="uint8").tobytes())
        with pytest.raises(ModelError, match=re.escape(str(path))):
            read_state_dict(path)

    def test_tensor_beyond_its_storage(self, tmp_path: Path) -> None:
        """A tensor whose size and stride reach past its storage raises ModelError."""
        tensors: list[Tensor] = [("w", "0", STORAGE_0, 4, (2, 3), (3, 1))]
        with pytest.raises(ModelError, match=r"'w' .* outside its storage of 8 elements"):
            read_state_dict(checkpoint(tmp_path, "zip", tensors))

    def test_storage_file_shorter_than_declared(self, tmp_path: Path) -> None:
        """A storage file with fewer bytes than its element count needs raises ModelError."""
        path = write_zip(
            tmp_path / "short.pth", state_dict_pickle(TENSORS), {"0": STORAGE_0[:5], "1": STORAGE_1}
        )
        with pytest.raises(ModelError, match=r"storage '0' has 20 bytes, expected 8 x 4"):
            read_state_dict(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A path that does not exist raises ModelError naming it."""
        path = tmp_path / "absent.pth"
        with pytest.raises(ModelError, match=re.escape(f"cannot read torch checkpoint '{path}'")):
            read_state_dict(path)
