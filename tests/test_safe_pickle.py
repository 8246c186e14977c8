"""``safe_load`` reads plain-data pickles and refuses every global and persistent id without running it."""

from __future__ import annotations

import os
import pickle

import pytest

from icg.errors import CheckpointError, UnsafePickleError
from icg.models.safe_pickle import safe_load

PLAIN = {
    "labels": [("dog", "NOUN", 10263), ("in", "ADV", 18986)],
    "nested": {"a": [1, 2.5, -3], "b": (True, False, None)},
    "unicode": "café ☕",
    "empty": ([], {}, ()),
}


class _SystemCall:
    """A classic malicious payload: unpickling calls ``os.system``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


class _Plain:
    pass


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips_in_every_protocol(protocol):
    assert safe_load(pickle.dumps(PLAIN, protocol=protocol)) == PLAIN


@pytest.mark.parametrize("protocol", range(3, pickle.HIGHEST_PROTOCOL + 1))
def test_bytes_load_from_protocol_3(protocol):
    assert safe_load(pickle.dumps([b"\x00\xff", b""], protocol=protocol)) == [b"\x00\xff", b""]


def test_loads_from_a_path(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(PLAIN))
    assert safe_load(path) == PLAIN
    assert safe_load(str(path)) == PLAIN


def test_os_system_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_SystemCall(str(marker))))
    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{os.system.__module__}.system" in message  # "posix.system" on Linux
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_builtins_eval_is_refused(protocol):
    # protocols < 3 write Python 2 module names ("__builtin__"); the message names what the file says
    with pytest.raises(UnsafePickleError, match=r"<bytes>: .*'(__builtin__|builtins)\.eval'"):
        safe_load(pickle.dumps(_Eval(), protocol=protocol))


def test_handwritten_global_opcode_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(UnsafePickleError, match=r"'os\.system'"):
        safe_load(payload)
    assert not marker.exists()


def test_any_class_is_refused_even_harmless_ones():
    with pytest.raises(UnsafePickleError, match="_Plain"):
        safe_load(pickle.dumps(_Plain()))
    with pytest.raises(UnsafePickleError, match=r"(__builtin__|builtins)\.set'"):
        safe_load(pickle.dumps({1, 2}, protocol=2))  # protocol < 4 pickles a set through a global


def test_persistent_ids_are_refused():
    import io

    class WithPersistentIds(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", 0) if obj == "tensor-data" else None

    buffer = io.BytesIO()
    WithPersistentIds(buffer, protocol=2).dump(["tensor-data"])
    with pytest.raises(UnsafePickleError, match="persistent id"):
        safe_load(buffer.getvalue())


def test_unregistered_extension_code_is_an_error():
    with pytest.raises(CheckpointError):
        safe_load(b"\x80\x02\x82\x01.")  # EXT1 1


def test_corrupt_and_missing_files_are_checkpoint_errors(tmp_path):
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps(PLAIN)[:-5])
    with pytest.raises(CheckpointError, match="truncated.pkl: not a valid plain-data pickle") as info:
        safe_load(truncated)
    assert not isinstance(info.value, UnsafePickleError)
    with pytest.raises(CheckpointError, match="missing.pkl: can't read"):
        safe_load(tmp_path / "missing.pkl")
    with pytest.raises(CheckpointError):
        safe_load(b"not a pickle at all")


class _CallsGetcwd:
    """Pickles as a call of ``os.getcwd`` (harmless, but code all the same)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_a_torch_file_holding_code_is_refused_without_torchs_advice(tmp_path):
    """torch's own message suggests ``weights_only=False`` (running the file's code): ICG never repeats it."""
    torch = pytest.importorskip("torch")
    from icg.clip_encoder import load_tensor_file

    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "payload": _CallsGetcwd()}, path)
    with pytest.raises(UnsafePickleError) as err:
        load_tensor_file(path)
    message = str(err.value)
    assert "weights_only" not in message and "likely succeed" not in message
    assert message.startswith(f"{path}: refused") and "holds code" in message
    assert "not only tensors" in message and "getcwd" in message and "\n" not in message


def test_a_corrupt_torch_file_is_not_called_code(tmp_path):
    pytest.importorskip("torch")
    from icg.clip_encoder import load_tensor_file

    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02 this is not a pickle")
    with pytest.raises(CheckpointError) as err:
        load_tensor_file(path)
    message = str(err.value)
    assert not isinstance(err.value, UnsafePickleError) and "not a readable weights file" in message
    assert "weights_only" not in message and "\n" not in message
