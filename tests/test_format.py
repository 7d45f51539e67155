"""The .moec container: round trips, and every malformed file raises MoecFormatError and nothing else.

The hostile-header cases are assembled here with an independent implementation of the documented
layout and a *correct* CRC, so they get past the checksum and exercise the validation itself.
"""

from __future__ import annotations

import json
import re
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec import pipeline
from codec.cli import main
from codec.decode.reconstruct import reconstruct
from codec.errors import MoecFormatError
from codec.format import moecfile
from codec.format.container import HEADER_DICTIONARY, READABLE_VERSIONS, VERSION, unpack_container
from codec.format.header import read_meta
from codec.io.phantom import make_phantom
from codec.settings import TrainConfig

from .training import train

FUZZ = settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])


def assemble(meta_text: bytes, nifti: bytes, payload: bytes, version: int = VERSION, nifti_len: int = 348) -> bytes:
    """The documented layout, written independently of codec.format.container (but for its dictionary)."""
    inner = struct.pack("<H", nifti_len) + nifti + meta_text
    deflater = zlib.compressobj(zdict=HEADER_DICTIONARY) if version >= 5 else zlib.compressobj()
    header = deflater.compress(inner) + deflater.flush()
    body = b"MOEC" + bytes([version]) + struct.pack("<H", len(header)) + header
    body += struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


KINDS = [8, 16, "grid"]


@pytest.fixture(scope="module")
def valid_files():
    """A quantized, a float16 and a latent-grid file of a small phantom."""
    volume, _ = make_phantom((32, 24, 16))
    files = {}
    for kind in KINDS:
        settings_ = pipeline.Settings(
            ratio=6, experts=4, bits=16 if kind == 16 else 8, encoder="grid" if kind == "grid" else "siren"
        )
        fitter, plan = train(volume, settings_, TrainConfig(steps=20, batch_size=1024))
        files[kind] = pipeline.file_bytes(fitter, plan)
    return volume, files


def decodes_or_refuses(data: bytes) -> None:
    """The only acceptable outcomes: a decoded model, or MoecFormatError."""
    try:
        moecfile.from_bytes(data)
    except MoecFormatError:
        pass


def test_round_trip_gives_bit_identical_voxels_twice(valid_files):
    volume, files = valid_files
    for data in files.values():
        first, second = reconstruct(moecfile.from_bytes(data)), reconstruct(moecfile.from_bytes(data))
        np.testing.assert_array_equal(first.volume.data, second.volume.data)
        np.testing.assert_array_equal(first.labels, second.labels)
        assert first.volume.shape == volume.shape


def test_atomic_write_and_read(valid_files, tmp_path):
    _, files = valid_files
    path = tmp_path / "a.moec"
    moecfile.write(path, files[8])
    assert path.read_bytes() == files[8]
    assert moecfile.read(path).nbytes == len(files[8])
    assert [p.name for p in tmp_path.iterdir()] == ["a.moec"]


def test_unknown_versions_name_both_versions(valid_files):
    _, files = valid_files
    c = unpack_container(files[8])
    data = assemble(json.dumps(c.meta).encode(), c.nifti, c.payload, version=8)
    with pytest.raises(MoecFormatError, match=r"version 8; this program reads version 1, 2, 3, 4, 5, 6, 7"):
        moecfile.from_bytes(data)
    assert READABLE_VERSIONS == (1, 2, 3, 4, 5, 6, 7)


def test_the_header_dictionary_never_changes():
    """Every version-5 file needs these exact bytes to inflate its header."""
    assert (len(HEADER_DICTIONARY), zlib.crc32(HEADER_DICTIONARY)) == (1720, 301009124)


def test_headers_deflate_against_the_dictionary_and_version_4_files_still_decode(valid_files):
    _, files = valid_files
    for data in files.values():
        c = unpack_container(data)
        header_len = struct.unpack_from("<H", data, 5)[0]
        assert data[7 + 1] & 0x20, "the zlib stream names a preset dictionary (FDICT)"
        old = assemble(
            json.dumps(c.meta, separators=(",", ":"), sort_keys=True).encode(), c.nifti, c.payload, version=4
        )
        old_header_len = struct.unpack_from("<H", old, 5)[0]
        assert header_len < 0.5 * old_header_len
        if "grid_interpolation" in c.meta["model"]:
            continue  # a cubically read grid is newer than version 4 (tests/test_cubic_reading.py)
        assert moecfile.from_bytes(old).meta.version == 4
        np.testing.assert_array_equal(
            reconstruct(moecfile.from_bytes(old)).volume.data, reconstruct(moecfile.from_bytes(data)).volume.data
        )


def test_version_1_files_still_decode_and_cannot_hold_a_grid(valid_files):
    """Version 1 predates the latent grid: its model descriptions lack the grid fields."""
    _, files = valid_files
    c = unpack_container(files[8])
    meta = json.loads(json.dumps(c.meta))
    for key in ("encoder", "grid_channels", "grid_levels", "grid_finest", "router_features"):
        del meta["model"][key]
    old = assemble(json.dumps(meta).encode(), c.nifti, c.payload, version=1)
    np.testing.assert_array_equal(
        reconstruct(moecfile.from_bytes(old)).volume.data, reconstruct(moecfile.from_bytes(files[8])).volume.data
    )
    grid = unpack_container(files["grid"])
    with pytest.raises(MoecFormatError, match="version-1 file cannot describe a latent-grid"):
        moecfile.from_bytes(assemble(json.dumps(grid.meta).encode(), grid.nifti, grid.payload, version=1))


def test_specific_malformations_have_readable_messages(valid_files):
    _, files = valid_files
    data = files[8]
    cases = {
        b"": "too short",
        b"PK\x03\x04" + data[4:]: "not a .moec file",
        data[:-9]: "truncated",
        data + b"\x00": "unexpected bytes",
        data[:-1] + bytes([data[-1] ^ 1]): "checksum",
    }
    for bad, message in cases.items():
        with pytest.raises(MoecFormatError, match=message):
            moecfile.from_bytes(bad)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10**6), which=st.sampled_from(KINDS))
def test_every_truncation_is_refused(valid_files, cut, which):
    data = valid_files[1][which]
    with pytest.raises(MoecFormatError):
        moecfile.from_bytes(data[: cut % len(data)])


@settings(deadline=None, max_examples=600)
@given(position=st.integers(min_value=0, max_value=10**6), bit=st.integers(0, 7), which=st.sampled_from(KINDS))
def test_every_bit_flip_is_refused(valid_files, position, bit, which):
    data = bytearray(valid_files[1][which])
    data[position % len(data)] ^= 1 << bit
    with pytest.raises(MoecFormatError):
        moecfile.from_bytes(bytes(data))


@FUZZ
@given(st.one_of(st.binary(max_size=3000), st.binary(max_size=3000).map(lambda b: b"MOEC\x01" + b)))
def test_random_bytes_are_refused(data):
    with pytest.raises(MoecFormatError):
        moecfile.from_bytes(data)


def _paths(node, prefix=()):
    """Every key path of a JSON tree (dicts and lists), leaves included."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**15, 2**16, 2**31 - 1, 2**31, 2**32, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=6),
    st.lists(st.sampled_from([1, 7, 65535, 2**20, 10**9]), min_size=3, max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)


@settings(deadline=None, max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.sampled_from(KINDS))
def test_hostile_headers_with_a_correct_crc_are_refused_cleanly(valid_files, data, which):
    c = unpack_container(valid_files[1][which])
    meta = json.loads(json.dumps(c.meta))
    path = data.draw(st.sampled_from([p for p in _paths(meta) if p]))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent["unexpected_" + str(path[-1])] = data.draw(HOSTILE)
    else:
        parent[path[-1]] = data.draw(HOSTILE)
    decodes_or_refuses(assemble(json.dumps(meta).encode(), c.nifti, c.payload))


@FUZZ
@given(payload=st.binary(max_size=4000), which=st.sampled_from(KINDS))
def test_hostile_payloads_with_a_correct_crc_are_refused_cleanly(valid_files, payload, which):
    c = unpack_container(valid_files[1][which])
    decodes_or_refuses(assemble(json.dumps(c.meta).encode(), c.nifti, payload))


@FUZZ
@given(position=st.integers(0, 10**6), value=st.integers(0, 255), which=st.sampled_from(KINDS))
def test_corrupted_weights_and_tables_with_a_correct_crc_are_refused_cleanly(valid_files, position, value, which):
    c = unpack_container(valid_files[1][which])
    payload = bytearray(c.payload)
    payload[position % len(payload)] = value
    decodes_or_refuses(assemble(json.dumps(c.meta).encode(), c.nifti, bytes(payload)))


@FUZZ
@given(nifti=st.binary(min_size=348, max_size=348), nifti_len=st.sampled_from([348, 0, 347, 540, 65535]))
def test_hostile_nifti_headers_are_refused_cleanly(valid_files, nifti, nifti_len):
    c = unpack_container(valid_files[1][8])
    decodes_or_refuses(assemble(json.dumps(c.meta).encode(), nifti, c.payload, nifti_len=nifti_len))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("shape", [2**15, 2**15, 2**15], "voxels"),
        ("shape", [-5, 10, 10], "shape"),
        ("shape", [10, 10], "3D or 4D"),
        ("dtype", "complex128", "dtype"),
        ("range", [0.0, 1e309], "non-finite number"),
        ("range", [0.0, 10**400], "range must be a finite number"),
        ("range", [-3e38, 3e38], "beyond what a NIfTI volume can hold"),
        ("scaling", [1e300, 0.0], "beyond what a NIfTI volume can hold"),
        ("scaling", [1e-45, 0.0], "beyond what a NIfTI volume can hold"),
        ("scaling", [1.0, 1e300], "beyond what a NIfTI volume can hold"),
        ("floor", 10**400, "floor must be a finite number"),
    ],
)
def test_huge_or_negative_fields_are_refused_before_any_allocation(valid_files, field, value, message):
    c = unpack_container(valid_files[1][8])
    meta = dict(c.meta)
    meta[field] = value
    text = json.dumps(meta).replace("Infinity", "1e999").encode()
    with pytest.raises(MoecFormatError, match=message):
        moecfile.from_bytes(assemble(text, c.nifti, c.payload))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"expert_width": 4096, "experts": 64}, "parameters"),
        ({"expert_width": 600}, "payload has only"),
        ({"experts": 0}, "experts"),
        ({"top_k": 5}, "top_k"),
        ({"partition": "octree"}, "partition"),
        ({"encoder": "octree"}, "encoder"),
        ({"encoder": "grid"}, "encoder_layers must be 0"),
    ],
)
def test_absurd_model_descriptions_are_refused(valid_files, change, message):
    c = unpack_container(valid_files[1][8])
    meta = json.loads(json.dumps(c.meta))
    meta["model"].update(change)
    with pytest.raises(MoecFormatError, match=message):
        moecfile.from_bytes(assemble(json.dumps(meta).encode(), c.nifti, c.payload))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"grid_finest": [1024, 1024, 1024], "grid_channels": 16}, "parameters"),
        ({"grid_finest": [100, 100, 100]}, "payload has only"),
        ({"grid_finest": [40, 40, 40]}, "cannot be decoded|outside their range|truncated"),
        ({"grid_finest": [1, 8, 8]}, "grid_finest"),
        ({"grid_finest": [8, 8]}, "grid_finest"),
        ({"grid_levels": 0}, "grid_levels"),
        ({"partition": "blocks"}, "partition"),
    ],
)
def test_absurd_grid_descriptions_are_refused(valid_files, change, message):
    c = unpack_container(valid_files[1]["grid"])
    meta = json.loads(json.dumps(c.meta))
    meta["model"].update(change)
    with pytest.raises(MoecFormatError, match=message):
        moecfile.from_bytes(assemble(json.dumps(meta).encode(), c.nifti, c.payload))


@pytest.mark.parametrize("bits", [0, 1, 17, 1000, -3])
def test_absurd_bit_widths_are_refused(valid_files, bits):
    c = unpack_container(valid_files[1][8])
    meta = json.loads(json.dumps(c.meta))
    meta["weights"]["bits"] = bits
    with pytest.raises(MoecFormatError, match="bits"):
        moecfile.from_bytes(assemble(json.dumps(meta).encode(), c.nifti, c.payload))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"stages": 5}, "'stages' must be three step counts"),
        ({"stages": [1]}, "'stages' must be three step counts"),
        ({"stages": [1, 2, -3]}, "'stages' must be three step counts"),
        ({"minutes": [1]}, "'minutes' is malformed"),
        ({"minutes": "5"}, "'minutes' is malformed"),
        ({"steps": 2.5}, "'steps' is malformed"),
        ({"seed": True}, "'seed' is malformed"),
    ],
)
def test_a_malformed_training_record_is_refused_by_the_reader_and_the_cli(
    valid_files, tmp_path, capsys, change, message
):
    c = unpack_container(valid_files[1][8])
    meta = json.loads(json.dumps(c.meta))
    meta["train"].update(change)
    data = assemble(json.dumps(meta).encode(), c.nifti, c.payload)
    with pytest.raises(MoecFormatError, match=message):
        read_meta(data)
    path = tmp_path / "bad.moec"
    path.write_bytes(data)
    assert main(["info", str(path)]) == 1
    said = capsys.readouterr().err.strip()
    assert said.startswith("moec: error:") and len(said.splitlines()) == 1 and re.search(message, said)


def test_weight_stream_words_past_the_last_weight_are_refused(valid_files):
    c = unpack_container(valid_files[1][8])
    moecfile.from_bytes(assemble(json.dumps(c.meta).encode(), c.nifti, c.payload))  # as written: decodes
    with pytest.raises(MoecFormatError, match="past its last weight"):
        moecfile.from_bytes(assemble(json.dumps(c.meta).encode(), c.nifti, c.payload + bytes([7, 0, 0, 0, 9, 0, 0, 0])))


def test_deeply_nested_headers_are_refused(valid_files):
    c = unpack_container(valid_files[1][8])
    with pytest.raises(MoecFormatError):
        moecfile.from_bytes(assemble(b"[" * 30_000 + b"]" * 30_000, c.nifti, c.payload))


@pytest.mark.parametrize(
    "entry,message",
    [
        (struct.pack("<Bhhe", 2, -1000, 1000, 1.0) + struct.pack("<e", 0.5) + bytes(400), "too many symbols"),
        (struct.pack("<Bhhe", 2, 0, 2, 1.0) + struct.pack("<e", 0.5) + bytes(400), "empty frequency table"),
        (struct.pack("<Bhhe", 2, 0, 300, 1.0) + struct.pack("<e", 0.5) + bytes(400), "truncated"),
    ],
)
def test_hostile_frequency_tables_are_refused_in_words(valid_files, entry, message):
    """The latent grid's first tensor carrying a table over too many symbols, an empty one, a cut one
    (the payloads are long enough to pass the weights-per-byte check that comes first)."""
    c = unpack_container(valid_files[1]["grid"])
    with pytest.raises(MoecFormatError, match=message):
        moecfile.from_bytes(assemble(json.dumps(c.meta).encode(), c.nifti, entry))


@pytest.mark.parametrize(
    "made_by",
    [
        {"moec": "0.1.0\x1b]0;pwned\x07"},
        {"moec\x1b[2J": "0.1.0"},
        {"moec": "x" * 41},
        {"moec": 1},
        {f"p{i}": "1" for i in range(17)},
    ],
)
def test_made_by_entries_a_terminal_would_act_on_are_refused(valid_files, tmp_path, capsys, made_by):
    """`moec info` prints the software that made a file: a forged entry with escape sequences (a
    terminal title, a cleared screen) is refused in words and never reaches the terminal."""
    c = unpack_container(valid_files[1][8])
    meta = json.loads(json.dumps(c.meta))
    meta["made_by"] = made_by
    path = tmp_path / "forged.moec"
    path.write_bytes(assemble(json.dumps(meta).encode(), c.nifti, c.payload))
    assert main(["info", str(path)]) == 1
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err
    assert "made_by entry" in out.err and len(out.err.strip().splitlines()) == 1
