"""pretrained: weights pinned in code, manifest file names kept in their folder, names made file-safe, no pickle."""
import ast
import hashlib
import json
import os
import pathlib
import re
import shutil

import pytest

from pretrained import digits, safe_name
from pretrained.pins import PINNED_SHA256
from pretrained.weights import (MANIFEST_FILE, WEIGHTS_ROOT, file_sha256, load_weights, read_manifest,
                                verify_weights, write_manifest)

PRETRAINED = pathlib.Path(digits.__file__).parent


def _tampered_copy(tmp_path, name="digits"):
    """A copy of a shipped folder whose weights changed and whose manifest was rewritten to agree with them."""
    folder = tmp_path / name
    shutil.copytree(WEIGHTS_ROOT / name, folder)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF  # the last byte is tensor data
    (folder / "model.safetensors").write_bytes(bytes(raw))
    manifest = read_manifest(folder)
    manifest["weights_sha256"] = file_sha256(folder / "model.safetensors")
    write_manifest(folder, manifest)
    return folder, manifest["weights_sha256"]


def test_pins_match_the_shipped_files():
    for name, pin in PINNED_SHA256.items():
        assert file_sha256(WEIGHTS_ROOT / name / "model.safetensors") == pin
        assert read_manifest(WEIGHTS_ROOT / name)["weights_sha256"] == pin
        assert verify_weights(WEIGHTS_ROOT / name, name)["name"] == name
    shipped = {d.name for d in WEIGHTS_ROOT.iterdir() if (d / "model.safetensors").exists()}
    assert set(PINNED_SHA256) == shipped and {"digits", "digits_features"} <= shipped  # every shipped file pinned


@pytest.mark.parametrize("name", ["digits", "digits_features"])
def test_weights_and_manifest_changed_together_fail_against_the_pin(tmp_path, name):
    folder, actual = _tampered_copy(tmp_path, name)
    pattern = f"sha256 is {actual}, the pin of '{name}' in pretrained/pins.py expects {PINNED_SHA256[name]}"
    with pytest.raises(ValueError, match=re.escape(pattern)):
        load_weights(folder)
    loader = digits.load_unet if name == "digits" else digits.load_feature_net
    with pytest.raises(ValueError, match="pins.py"):
        loader(folder)
    # Your own weights load only when you say so: by their sha256, or by trusting the manifest.
    state, manifest = load_weights(folder, name, expected_sha256=actual)
    assert manifest["weights_sha256"] == actual and state
    assert loader(folder, trust_manifest=True)[1]["weights_sha256"] == actual
    with pytest.raises(ValueError, match=f"the caller expects {PINNED_SHA256[name]}"):
        load_weights(folder, expected_sha256=PINNED_SHA256[name])
    with pytest.raises(ValueError, match="not both"):
        load_weights(folder, expected_sha256=actual, trust_manifest=True)


def test_manifest_check_still_applies_with_trust_manifest(tmp_path):
    folder, _ = _tampered_copy(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="manifest .* expects"):
        load_weights(folder, trust_manifest=True)


def test_unpinned_or_renamed_checkpoint_is_refused(tmp_path):
    folder, _ = _tampered_copy(tmp_path)
    manifest = read_manifest(folder)
    write_manifest(folder, {**manifest, "name": "mine"})
    with pytest.raises(ValueError, match=r"no pinned sha256 for checkpoint 'mine'.*trust_manifest=True"):
        load_weights(folder)
    with pytest.raises(ValueError, match="names checkpoint 'mine', expected 'digits'"):
        digits.load_unet(folder, trust_manifest=True)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        load_weights(folder, expected_sha256="abc")


HOSTILE_WEIGHTS_FILES = ["/etc/passwd", "../digits_features/model.safetensors", "sub/model.safetensors",
                         "..", ".", "", ".model.safetensors", "model.safetensors\0", "C:\\model.safetensors",
                         "..\\model.safetensors", "model.bin", "model.pt", 7, None, ["model.safetensors"]]


@pytest.fixture
def no_reads(monkeypatch):
    """Fail the test if anything is hashed or read as bytes (the checks must come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a file was hashed or read before the manifest's weights_file was checked")
    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    monkeypatch.setattr(hashlib, "sha256", refuse)


@pytest.mark.parametrize("weights_file", HOSTILE_WEIGHTS_FILES, ids=repr)
def test_weights_file_must_be_a_plain_name_in_the_folder(tmp_path, weights_file, no_reads):
    folder = tmp_path / "digits"
    shutil.copytree(WEIGHTS_ROOT / "digits", folder)
    write_manifest(folder, {**json.loads((folder / MANIFEST_FILE).read_text()), "weights_file": weights_file})
    with pytest.raises(ValueError, match="weights_file .* must be a plain file name"):
        load_weights(folder, trust_manifest=True)


def test_symlinks_must_stay_in_the_folder(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    shutil.copytree(WEIGHTS_ROOT / "digits", outside)
    folder = tmp_path / "digits"
    folder.mkdir()
    shutil.copy(outside / MANIFEST_FILE, folder / MANIFEST_FILE)
    (folder / "model.safetensors").symlink_to(outside / "model.safetensors")  # the pinned bytes, but elsewhere
    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "read_bytes", lambda self: pytest.fail("read before the symlink was checked"))
        with pytest.raises(ValueError, match="weights_file resolves to .*outside the folder"):
            load_weights(folder)
    # A manifest that is itself a link out of the folder is refused too.
    (folder / "model.safetensors").unlink()
    shutil.copy(outside / "model.safetensors", folder / "model.safetensors")
    (folder / MANIFEST_FILE).unlink()
    (folder / MANIFEST_FILE).symlink_to(outside / MANIFEST_FILE)
    with pytest.raises(ValueError, match="manifest resolves to .*outside the folder"):
        load_weights(folder)
    # A link to another file inside the folder is fine.
    (folder / MANIFEST_FILE).unlink()
    shutil.copy(outside / MANIFEST_FILE, folder / MANIFEST_FILE)
    (folder / "model.safetensors").rename(folder / "real.safetensors")
    (folder / "model.safetensors").symlink_to("real.safetensors")
    assert load_weights(folder)[1]["name"] == "digits"


def test_broken_folders_give_value_errors(tmp_path):
    with pytest.raises(ValueError, match="no such checkpoint folder"):
        load_weights(tmp_path / "missing")
    folder = tmp_path / "digits"
    shutil.copytree(WEIGHTS_ROOT / "digits", folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="weights_file is missing"):
        load_weights(folder)
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        load_weights(folder)
    (folder / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_weights(folder)


HOSTILE_NAMES = ["hub:../../x", "hub:/etc/passwd", "/abs/path", "..", ".", "", "...", "a/b\\c", "hub:a/b", "hub:a_b",
                 "ñandú-ü", "名前", "\0", "-rf", "." * 300, "a" * 1000, "a" * 1001, "hub:" + "../" * 50,
                 "x\ny", "🙂", "\ud800", "CON", "gmm-2d", "hub:C:\\Windows", "~/.ssh/id_rsa", " ", "a" * 40 + "/"]


def test_safe_name_is_a_plain_file_name_that_stays_in_its_folder(tmp_path):
    tokens = [safe_name(n) for n in HOSTILE_NAMES]
    assert len(set(tokens)) == len(HOSTILE_NAMES)  # distinct names never share a file
    for name, token in zip(HOSTILE_NAMES, tokens):
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", token), (name, token)
        assert token not in (".", "..") and len(token) <= 51 and safe_name(name) == token
        path = tmp_path / token
        assert path.resolve().parent == tmp_path.resolve()
        path.write_text(name.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    assert len(list(tmp_path.iterdir())) == len(HOSTILE_NAMES)
    assert safe_name("gmm-2d").startswith("gmm-2d-") and safe_name("hub:google/ddpm").startswith("hub_google_ddpm-")
    with pytest.raises(ValueError, match="must be a str"):
        safe_name(b"digits")


def _calls(tree, attr):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == attr]


def test_pretrained_never_unpickles():
    """Static check of pretrained/**: torch.load only with weights_only=True, np.load without pickles, no pickle."""
    files = sorted(PRETRAINED.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"pickle", "dill", "cloudpickle", "joblib"} & set(names), path
        for call in _calls(tree, "load"):
            owner = ast.unparse(call.func.value)
            kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if owner == "torch":
                assert kw.get("weights_only") == "True", f"{path}: {ast.unparse(call)}"
            if owner in ("np", "numpy"):
                assert kw.get("allow_pickle") == "False", f"{path}: {ast.unparse(call)}"
        for call in _calls(tree, "from_pretrained"):
            kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
            assert kw.get("use_safetensors") == "True", f"{path}: {ast.unparse(call)}"


def test_symlink_check_uses_real_paths(tmp_path):
    """A folder reached through a symlink is still 'inside' itself (realpath on both sides)."""
    link = tmp_path / "link"
    os.symlink(WEIGHTS_ROOT / "digits", link)
    assert load_weights(link)[1]["name"] == "digits"
