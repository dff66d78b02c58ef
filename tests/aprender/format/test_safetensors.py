"""aprender.format.safetensors: round-trips, sharding, lazy reads, atomic writes.

Oracles: the `safetensors` library (reads our files, writes files we read), huggingface_hub's shard
planner, transformers' size parser and `from_pretrained`/`save_pretrained`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import weakref
from pathlib import Path

import pytest
import safetensors.torch as st_torch
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.utils.hub import convert_file_size_to_int

from aprender.atomic import remove_temp_files
from aprender.errors import AprenderError, FormatError, InvalidArgumentError
from aprender.format import safetensors as sf

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
FLOAT8 = [torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz, torch.float8_e8m0fnu]
INTS = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64]


def _sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Deterministic values spanning the dtype (no NaN, so torch.equal applies)."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype == torch.complex64:
        return torch.randn(shape, generator=gen, dtype=torch.complex64)
    if dtype.is_floating_point:
        values = torch.randn(shape, generator=gen) * 4
        return (values.abs() + 0.5 if dtype == torch.float8_e8m0fnu else values).to(dtype)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**62)), min(info.max, 2**62)
    return torch.randint(low, high, shape, generator=gen, dtype=torch.int64).to(dtype)


def _file_header(path: Path) -> dict:
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length])


# ------------------------------------------------------------------------------------------ parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5GB", 5 * 10**9),
        ("500MB", 500 * 10**6),
        ("2GiB", 2 * 2**30),
        ("10kB", 10_000),
        ("7 kib", 7 * 1024),
        (" 3TB ", 3 * 10**12),
        ("1.5GiB", 3 * 2**29),  # 1.5 * 2**30 = 3 * 2**29 exactly
        ("2.5KB", 2500),
        ("123", 123),
        ("64B", 64),
        (4096, 4096),
    ],
)
def test_parse_size_values(text: int | str, expected: int) -> None:
    assert sf.parse_size(text) == expected


@pytest.mark.parametrize(
    "bad", ["5XB", "", "GB", "-5GB", "5 G B", "1e3MB", "5Gb", "5mb", "100b", "0.1B", 0, -1, True, 1.5, None]
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="size"):
        sf.parse_size(bad)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10**6), st.sampled_from(["KB", "MB", "GB", "kB", "MiB", "GiB", "KiB", "gib", "Mib"]))
def test_parse_size_matches_transformers(value: int, unit: str) -> None:
    # Oracle: transformers.utils.hub.convert_file_size_to_int (the parser behind save_pretrained).
    assert sf.parse_size(f"{value}{unit}") == convert_file_size_to_int(f"{value}{unit}")


# ------------------------------------------------------------------------------------------ single file


@pytest.mark.parametrize("dtype", [*FLOATS, *FLOAT8, *INTS, torch.bool, torch.complex64], ids=str)
def test_dtype_round_trip_bit_exact(tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = {"matrix": _sample(dtype, (5, 7), 1), "scalar": _sample(dtype, (), 2), "empty": _sample(dtype, (0, 3))}
    path = tmp_path / "x.safetensors"
    sf.save_file(tensors, path)
    for loaded in (sf.load_file(path), st_torch.load_file(path)):  # ours, then the library as oracle
        assert list(loaded) == list(tensors)
        for name, tensor in tensors.items():
            assert loaded[name].dtype == dtype and loaded[name].shape == tensor.shape
            assert torch.equal(loaded[name], tensor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_bit_pattern_survives(tmp_path: Path, dtype: torch.dtype) -> None:
    # Random bytes viewed as floats include NaN payloads, infinities and subnormals: compare raw bytes.
    raw = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    tensor = raw.view(dtype)
    sf.save_file({"bits": tensor}, tmp_path / "bits.safetensors")
    loaded = sf.load_file(tmp_path / "bits.safetensors")["bits"]
    assert loaded.dtype == dtype
    assert torch.equal(loaded.view(torch.uint8), raw)


def test_reads_files_written_by_the_library(tmp_path: Path) -> None:
    tensors = {"a": _sample(torch.bfloat16, (3, 4)), "b": _sample(torch.int32, (6,)), "c": _sample(torch.float16, (2,))}
    st_torch.save_file(tensors, tmp_path / "lib.safetensors", metadata={"origin": "library"})
    loaded = sf.load_file(tmp_path / "lib.safetensors")
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert sf.load_metadata(tmp_path / "lib.safetensors") == {"origin": "library"}


def test_metadata_round_trip(tmp_path: Path) -> None:
    metadata = {"format": "pt", "note": "ünïcode ✓", "empty": ""}
    sf.save_file({"w": torch.ones(2)}, tmp_path / "m.safetensors", metadata)
    assert sf.load_metadata(tmp_path / "m.safetensors") == metadata
    with sf.open_checkpoint(tmp_path / "m.safetensors") as reader:
        assert reader.metadata == metadata
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as handle:
        assert handle.metadata() == metadata
    sf.save_file({"w": torch.ones(2)}, tmp_path / "none.safetensors")
    assert sf.load_metadata(tmp_path / "none.safetensors") == {}


def test_layout_is_aligned_and_keeps_order(tmp_path: Path) -> None:
    tensors = {"u8": torch.arange(3, dtype=torch.uint8), "f64": torch.ones(2, dtype=torch.float64)}
    tensors["f16"] = torch.ones(5, dtype=torch.float16)
    path = tmp_path / "a.safetensors"
    sf.save_file(tensors, path)
    header = _file_header(path)
    assert list(header) == ["u8", "f64", "f16"]  # the mapping's order
    # Data goes by decreasing element size: f64 [0,16), f16 [16,26), u8 [26,29); the header is padded to 8.
    assert [header[k]["data_offsets"] for k in ("f64", "f16", "u8")] == [[0, 16], [16, 26], [26, 29]]
    assert int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0


def test_non_contiguous_and_views_save_their_values(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "transposed": base.T,
        "strided": base[:, ::2],
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "conj": torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64).conj(),  # lazy conj bit
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }
    sf.save_file(tensors, tmp_path / "v.safetensors")
    loaded = sf.load_file(tmp_path / "v.safetensors")
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor.detach().resolve_conj()), name
    assert torch.equal(loaded["conj"], torch.tensor([1 - 2j, 3 + 4j], dtype=torch.complex64))


def test_shared_storage_is_written_as_copies(tmp_path: Path) -> None:
    weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    tensors = {"embed.weight": weight, "lm_head.weight": weight, "row": weight[1]}
    with pytest.raises(RuntimeError, match="share memory"):  # why we copy: the library refuses this
        st_torch.save_file(tensors, tmp_path / "lib.safetensors")
    sf.save_file(tensors, tmp_path / "tied.safetensors")
    loaded = sf.load_file(tmp_path / "tied.safetensors")
    assert torch.equal(loaded["embed.weight"], weight) and torch.equal(loaded["lm_head.weight"], weight)
    assert torch.equal(loaded["row"], weight[1])
    loaded["embed.weight"].add_(1)  # independent copies: the twin does not move
    assert torch.equal(loaded["lm_head.weight"], weight)


@pytest.mark.parametrize(
    ("tensors", "metadata", "match"),
    [
        ([torch.ones(1)], None, "mapping"),
        ({1: torch.ones(1)}, None, "tensor name 1"),
        ({"__metadata__": torch.ones(1)}, None, "__metadata__"),
        ({"x": [1.0]}, None, "not a torch.Tensor"),
        ({"x": torch.ones(1, dtype=torch.complex128)}, None, "cannot store"),
        ({"x": torch.eye(2).to_sparse()}, None, "dense"),
        ({"x": torch.empty(2, device="meta")}, None, "dense"),
        ({"x": torch.ones(1)}, {"k": 1}, "metadata"),
    ],
)
def test_save_file_rejects_bad_input(tmp_path: Path, tensors: object, metadata: object, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        sf.save_file(tensors, tmp_path / "bad.safetensors", metadata)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_write_failure_leaves_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"
    sf.save_file({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    calls = []

    def failing_write(stream, tensor):  # writes half a tensor, then the disk "fills up"
        calls.append(tensor)
        stream.write(b"\x00" * 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf, "_write_tensor", failing_write)
    with pytest.raises(OSError, match="No space left"):
        sf.save_file({"w": torch.zeros(3), "v": torch.zeros(9)}, path)
    with pytest.raises(OSError, match="No space left"):
        sf.save_file({"w": torch.zeros(3)}, tmp_path / "new.safetensors")
    assert len(calls) == 2
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp files, no new file


def test_written_file_honours_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        sf.save_file({"w": torch.ones(1)}, tmp_path / "u.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "u.safetensors").stat().st_mode) == 0o640  # 0o666 & ~0o027


def test_loaded_tensors_survive_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    sf.save_file({"w": torch.full((1000,), 7.0)}, path)
    loaded = sf.load_file(path)["w"]  # mmap-backed
    sf.save_file({"w": torch.zeros(10)}, path)  # replaced via os.replace: the old inode lives on
    assert torch.equal(loaded, torch.full((1000,), 7.0))


def test_device_argument(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    sf.save_file({"w": torch.ones(2, 3, dtype=torch.bfloat16)}, path)
    meta = sf.load_file(path, device="meta")["w"]
    assert meta.device.type == "meta" and meta.shape == (2, 3) and meta.dtype == torch.bfloat16
    assert sf.load(path, device=torch.device("meta"))["w"].is_meta
    assert torch.equal(sf.load(path, device=torch.device("cpu"))["w"], torch.ones(2, 3, dtype=torch.bfloat16))
    for call in (sf.load_file, sf.load):
        with pytest.raises(InvalidArgumentError, match="nonsense"):
            call(path, device="nonsense")


@pytest.mark.cuda
def test_load_to_cuda(tmp_path: Path) -> None:
    tensors = {"w": _sample(torch.bfloat16, (8, 8))}
    sf.save(tensors, tmp_path, max_shard_size=64)
    loaded = sf.load(tmp_path, device="cuda")
    assert loaded["w"].is_cuda and torch.equal(loaded["w"].cpu(), tensors["w"])


# ------------------------------------------------------------------------------------------ sharded


def _six_tensors() -> dict[str, torch.Tensor]:
    return {f"layer{i}.weight": _sample(torch.float32, (1000,), i) for i in range(6)}  # 4000 bytes each


def test_sharded_save_layout_and_round_trip(tmp_path: Path) -> None:
    tensors = _six_tensors()
    written = sf.save(tensors, tmp_path, max_shard_size="10KB", metadata={"step": "7"})
    # 10 KB = 10000 bytes holds two 4000-byte tensors (a third would make 12000): 3 shards of 2.
    names = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert [p.name for p in written] == [*names, "model.safetensors.index.json"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": 24000}
    assert index["weight_map"] == {f"layer{i}.weight": names[i // 2] for i in range(6)}
    for i, name in enumerate(names):
        shard = st_torch.load_file(tmp_path / name)  # the library reads each shard
        assert list(shard) == [f"layer{2 * i}.weight", f"layer{2 * i + 1}.weight"]
        assert sf.load_metadata(tmp_path / name) == {"format": "pt", "step": "7"}
    loaded = sf.load(tmp_path)
    assert list(loaded) == list(tensors)
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tensors.items())
    assert sf.load_metadata(tmp_path) == {"format": "pt", "step": "7"}
    assert list(sf.load(tmp_path / "model.safetensors.index.json")) == list(tensors)


def test_shard_plan_matches_huggingface_hub(tmp_path: Path) -> None:
    tensors = {f"t{i}": _sample(torch.float16, (n,), i) for i, n in enumerate([300, 100, 500, 50, 50, 400, 250, 10])}
    sf.save(tensors, tmp_path, max_shard_size=1000)
    # Oracle: huggingface_hub's planner, which save_pretrained uses (no tensor exceeds the limit here).
    split = split_torch_state_dict_into_shards(tensors, max_shard_size=1000)
    expected = {name: split.tensor_to_filename[name] for name in tensors}
    assert json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"] == expected


def test_oversized_tensor_gets_its_own_shard(tmp_path: Path) -> None:
    tensors = {"a": torch.ones(1000), "big": torch.ones(5000), "c": torch.ones(1000)}  # 4000, 20000, 4000 bytes
    written = sf.save(tensors, tmp_path, max_shard_size=10_000)
    assert len(written) == 4
    index = json.loads(written[-1].read_text())["weight_map"]
    assert [index[k] for k in ("a", "big", "c")] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def test_small_model_is_one_file_with_format_metadata(tmp_path: Path) -> None:
    written = sf.save({"w": torch.ones(4)}, tmp_path)
    assert written == [tmp_path / "model.safetensors"]
    assert sf.load_metadata(tmp_path) == {"format": "pt"}
    assert sf.save({}, tmp_path / "empty") == [tmp_path / "empty" / "model.safetensors"]
    assert sf.load(tmp_path / "empty") == {}


def test_stale_shards_are_removed(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "other-00001-of-00002.safetensors").write_bytes(b"keep")
    (tmp_path / "model_extra.safetensors").write_bytes(b"keep")
    sf.save(_six_tensors(), tmp_path, max_shard_size=10_000)  # 3 shards
    smaller = {k: v for k, v in list(_six_tensors().items())[:4]}
    sf.save(smaller, tmp_path, max_shard_size=10_000)  # 2 shards
    model_files = sorted(p.name for p in tmp_path.glob("model*"))
    assert model_files == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "model_extra.safetensors",
    ]
    assert list(sf.load(tmp_path)) == list(smaller)
    sf.save({"w": torch.ones(2)}, tmp_path)  # now one file: index and shards go
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "model_extra.safetensors",
        "other-00001-of-00002.safetensors",
    ]
    sf.save(_six_tensors(), tmp_path, max_shard_size=10_000)  # and back: the single file goes
    assert not (tmp_path / "model.safetensors").exists()
    assert list(sf.load(tmp_path)) == list(_six_tensors())


def test_prefix(tmp_path: Path) -> None:
    written = sf.save(_six_tensors(), tmp_path, max_shard_size="12KB", prefix="adapter_model")
    assert [p.name for p in written] == [
        "adapter_model-00001-of-00002.safetensors",
        "adapter_model-00002-of-00002.safetensors",
        "adapter_model.safetensors.index.json",
    ]
    assert list(sf.load(tmp_path)) == list(_six_tensors())  # the folder's only index
    for bad in ["", "a/b", "..", "."]:
        with pytest.raises(InvalidArgumentError, match="prefix"):
            sf.save({}, tmp_path, prefix=bad)


def test_save_rejects_bad_input_before_writing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="size"):
        sf.save({"w": torch.ones(1)}, tmp_path / "a", max_shard_size="lots")
    with pytest.raises(InvalidArgumentError, match="cannot store"):
        sf.save({"w": torch.ones(1), "z": torch.ones(1, dtype=torch.complex128)}, tmp_path / "b", max_shard_size=1)
    with pytest.raises(InvalidArgumentError, match="metadata"):
        sf.save({"w": torch.ones(1)}, tmp_path / "c", metadata={"n": 3})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ streaming writer

TEMP_SHARD = re.compile(r"\.model-0000\d\.safetensors\.[0-9a-f]{32}\.tmp")


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_writer_writes_each_full_shard_and_drops_it(tmp_path: Path) -> None:
    tensors = _six_tensors()  # 4000 bytes each
    refs = []
    with sf.CheckpointWriter(tmp_path, max_shard_size=10_000, metadata={"step": "7"}) as writer:
        for name, tensor in tensors.items():
            copy = tensor.clone()  # only the writer holds it
            refs.append(weakref.ref(copy))
            writer.save_tensor(name, copy)
            del copy
            if name == "layer2.weight":
                # 4000 + 4000 + 4000 > 10000: layers 0-1 went to a temp file, only layer 2 is held; no final name yet.
                assert [ref() is None for ref in refs] == [True, True, False]
                assert [TEMP_SHARD.fullmatch(path.name) is not None for path in tmp_path.iterdir()] == [True]
        written = writer.finalize()
    names = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert [path.name for path in written] == [*names, "model.safetensors.index.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in written)  # no temp files
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index == {
        "metadata": {"total_size": 24000},  # 6 x 1000 float32
        "weight_map": {f"layer{i}.weight": names[i // 2] for i in range(6)},
    }
    from safetensors import safe_open

    for i, name in enumerate(names):  # the library reads every shard
        with safe_open(str(tmp_path / name), framework="pt") as handle:
            assert handle.metadata() == {"format": "pt", "step": "7"}
            keys = [f"layer{2 * i}.weight", f"layer{2 * i + 1}.weight"]
            assert list(handle.keys()) == keys
            assert all(torch.equal(handle.get_tensor(key), tensors[key]) for key in keys)


def test_writer_one_shard_replaces_an_earlier_sharded_save(tmp_path: Path) -> None:
    sf.save(_six_tensors(), tmp_path, max_shard_size=10_000)  # 3 shards + index
    (tmp_path / "config.json").write_text("{}")
    with sf.CheckpointWriter(tmp_path, max_shard_size=10_000) as writer:
        writer.save_tensor("w", torch.arange(6.0))
    # A clean exit finalizes: one file under the single-file name, the earlier shards and index are gone.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert list(st_torch.load_file(tmp_path / "model.safetensors")) == ["w"]
    assert torch.equal(sf.load(tmp_path)["w"], torch.arange(6.0))


@pytest.mark.parametrize(
    ("failure", "error", "message"), [("producer", RuntimeError, "producer failed"), ("disk full", OSError, "No space")]
)
def test_writer_failure_leaves_the_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str, error: type[Exception], message: str
) -> None:
    sf.save(_six_tensors(), tmp_path, max_shard_size=10_000)  # the previous model: 3 shards + index
    (tmp_path / "config.json").write_text("{}")
    before = _folder_bytes(tmp_path)
    if failure == "disk full":
        real_write = sf._write_tensor
        writes: list[torch.Tensor] = []

        def failing_write(stream, tensor):  # the second shard's first tensor is half written
            writes.append(tensor)
            if len(writes) == 3:
                stream.write(b"\x00" * 2)
                raise OSError(28, "No space left on device")
            real_write(stream, tensor)

        monkeypatch.setattr(sf, "_write_tensor", failing_write)
    with pytest.raises(error, match=message), sf.CheckpointWriter(tmp_path, max_shard_size=10_000) as writer:
        for i in range(5):  # the 3rd and 5th tensors write shards 1 and 2 (temp files)
            writer.save_tensor(f"layer{i}.weight", torch.zeros(1000))
        assert len([path for path in tmp_path.iterdir() if TEMP_SHARD.fullmatch(path.name)]) == 2
        raise RuntimeError("producer failed")
    assert _folder_bytes(tmp_path) == before  # the previous model untouched, no temp file left
    with pytest.raises(AprenderError, match="finalized or discarded"):
        writer.save_tensor("late", torch.zeros(1))


def test_writer_misuse(tmp_path: Path) -> None:
    for bad in ({"max_shard_size": "lots"}, {"prefix": "a/b"}, {"metadata": {"n": 3}}):
        with pytest.raises(InvalidArgumentError):
            sf.CheckpointWriter(tmp_path / "never", **bad)  # type: ignore[arg-type]
    assert not (tmp_path / "never").exists()  # settings are checked before the folder is made
    writer = sf.CheckpointWriter(tmp_path)
    writer.save_tensor("w", torch.ones(2))
    with pytest.raises(InvalidArgumentError, match="'w' was already saved"):
        writer.save_tensor("w", torch.zeros(2))
    with pytest.raises(InvalidArgumentError, match="cannot store"):
        writer.save_tensor("z", torch.ones(1, dtype=torch.complex128))
    assert writer.finalize() == [tmp_path / "model.safetensors"]  # the rejected tensors left no trace
    assert list(sf.load(tmp_path)) == ["w"] and torch.equal(sf.load(tmp_path)["w"], torch.ones(2))
    with pytest.raises(AprenderError, match="finalized or discarded"):
        writer.finalize()


def test_a_killed_writer_leaves_only_temp_files(tmp_path: Path) -> None:
    writer = sf.CheckpointWriter(tmp_path, max_shard_size=10_000)
    for name, tensor in _six_tensors().items():
        writer.save_tensor(name, tensor)
    # Never finalized (as if the process were killed): two shards sit under temp names only.
    temps = sorted(path.name for path in tmp_path.iterdir())
    assert len(temps) == 2 and all(TEMP_SHARD.fullmatch(name) for name in temps)
    assert sorted(path.name for path in remove_temp_files(tmp_path)) == temps
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ folders


def test_folder_resolution(tmp_path: Path) -> None:
    sf.save_file({"a": torch.ones(1)}, tmp_path / "adapter_model.safetensors")
    assert list(sf.load(tmp_path)) == ["a"]  # the folder's only file
    sf.save_file({"b": torch.ones(1)}, tmp_path / "second.safetensors")
    with pytest.raises(FormatError, match=r"several checkpoints \(adapter_model\.safetensors, second\.safetensors\)"):
        sf.load(tmp_path)
    sf.save_file({"m": torch.ones(1)}, tmp_path / "model.safetensors")
    assert list(sf.load(tmp_path)) == ["m"]  # transformers' name wins
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match=re.escape(f"{tmp_path / 'empty'}: the folder has no .safetensors")):
        sf.load(tmp_path / "empty")
    with pytest.raises(FormatError, match="no such file or folder"):
        sf.open_checkpoint(tmp_path / "missing")


def test_a_shard_loads_on_its_own(tmp_path: Path) -> None:
    sf.save(_six_tensors(), tmp_path, max_shard_size=10_000)
    assert list(sf.load(tmp_path / "model-00002-of-00003.safetensors")) == ["layer2.weight", "layer3.weight"]


# ------------------------------------------------------------------------------------------ lazy reader


def test_reader_reads_one_shard_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = _six_tensors()
    sf.save(tensors, tmp_path, max_shard_size=10_000)
    third = tmp_path / "model-00003-of-00003.safetensors"
    third.write_bytes(third.read_bytes()[:100])  # break another shard's data
    opened: list[str] = []
    real_safe_open = sf.safe_open
    monkeypatch.setattr(
        sf, "safe_open", lambda path, **kw: opened.append(Path(path).name) or real_safe_open(path, **kw)
    )
    with sf.open_checkpoint(tmp_path) as reader:
        assert reader.keys() == list(tensors)
        assert opened == []  # opening reads only the index
        assert torch.equal(reader.get_tensor("layer1.weight"), tensors["layer1.weight"])
        assert reader.shape("layer0.weight") == (1000,) and reader.dtype("layer0.weight") == torch.float32
        assert opened == ["model-00001-of-00003.safetensors"]
        with pytest.raises(FormatError, match=re.escape(str(third))):
            reader.get_tensor("layer5.weight")


def test_reader_api(tmp_path: Path) -> None:
    tensors = {"a": _sample(torch.bfloat16, (2, 3)), "b": _sample(torch.int64, (4,))}
    sf.save_file(tensors, tmp_path / "r.safetensors", {"k": "v"})
    reader = sf.open_checkpoint(tmp_path / "r.safetensors")
    assert reader.keys() == ["a", "b"] and reader.metadata == {"k": "v"}
    assert "a" in reader and "nope" not in reader
    assert reader.shape("a") == (2, 3) and reader.dtype("a") == torch.bfloat16 and reader.dtype("b") == torch.int64
    got = reader.get_tensor("a")
    with pytest.raises(FormatError, match=r"r.safetensors: the checkpoint has no tensor 'nope'"):
        reader.get_tensor("nope")
    reader.close()
    reader.close()
    assert torch.equal(got, tensors["a"])  # still valid after close
    for method in (reader.keys, lambda: reader.get_tensor("a"), lambda: reader.shape("a")):
        with pytest.raises(AprenderError, match="closed"):
            method()


# ------------------------------------------------------------------------------------------ transformers


def _tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_transformers_loads_our_sharded_save(tmp_path: Path, tie: bool) -> None:
    from transformers import AutoModelForCausalLM

    model = _tiny_llama(tie)
    state = model.state_dict()
    written = sf.save(state, tmp_path, max_shard_size="20KB")
    model.config.save_pretrained(tmp_path)
    assert len(written) > 3  # several shards + index
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded_state[name], tensor) and loaded_state[name].dtype == tensor.dtype, name
    if tie:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_we_load_transformers_sharded_save(tmp_path: Path) -> None:
    model = _tiny_llama(tie=False)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    loaded = sf.load(tmp_path)
    state = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert sf.load_metadata(tmp_path)["format"] == "pt"
