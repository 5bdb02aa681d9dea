"""Backbone weights (docs/design.md §4): ImageNet from the hub cache, random, or a local file.

No test here touches the network: ``offline`` refuses every connection and name lookup,
and the one download that succeeds is served from memory by a fake ``urlopen``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import socket
from email.message import Message
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2, mobilenet_v3_small

from exbl_core import cli, weights
from exbl_core.model import FROZEN_BLOCKS
from exbl_core.weights import IMAGENET, RANDOM, StartWeights, WeightsError


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No name lookups and no connections, as on a machine without network."""

    def refuse(*_a, **_k):
        raise socket.gaierror(socket.EAI_NONAME, "network access refused by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def saved(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- files


def test_a_torchvision_state_dict_gives_its_backbone_and_the_files_sha256(tmp_path, mobilenet_reference):
    path = saved(tmp_path / "mobilenet.pt", mobilenet_reference.state_dict())
    features, digest = weights.load_backbone(path)
    assert digest == sha256(path)
    assert set(features) == {f"features.{k}" for k in mobilenet_reference.features.state_dict()}
    assert torch.equal(features["features.0.0.weight"], mobilenet_reference.features[0][0].weight)


def test_a_backbone_only_state_dict_loads(tmp_path, mobilenet_reference):
    path = saved(tmp_path / "backbone.pt", {f"features.{k}": v for k, v in mobilenet_reference.features.state_dict().items()})
    features, _ = weights.load_backbone(path)
    assert len(features) == len(mobilenet_reference.features.state_dict())


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: nn.Linear(3, 3).state_dict(), r"not a MobileNetV2 backbone \(\d+ of its \d+ features\.\* tensors are missing"),
        (lambda: mobilenet_v3_small().state_dict(), r"not a MobileNetV2 backbone \(306 of its 312 features\.\* tensors are missing"),
        (
            lambda: mobilenet_v2(width_mult=0.5).state_dict(),
            r"not a MobileNetV2 backbone \(features\.0\.0\.weight has shape \(16, 3, 3, 3\), expected \(32, 3, 3, 3\)\)",
        ),
        (lambda: [1, 2, 3], r"not a state dict"),
        (lambda: {"features.0.0.weight": 1.0}, r"not a state dict"),
        (lambda: nn.Linear(3, 3), r"cannot be loaded safely as weights \(it holds a pickled torch\.nn\.modules\.linear\.Linear"),
    ],
    ids=["linear", "mobilenet_v3", "half_width", "list", "non_tensor", "pickled_module"],
)
def test_a_file_that_is_not_a_mobilenet_v2_backbone_is_refused_naming_it(tmp_path, make, reason):
    path = saved(tmp_path / "foreign.pt", make())
    with pytest.raises(WeightsError, match=rf"^{tmp_path}/foreign\.pt: {reason}") as info:
        weights.load_backbone(path)
    assert "\n" not in str(info.value)


def test_a_truncated_weights_file_is_refused_naming_it(tmp_path, mobilenet_reference):
    path = saved(tmp_path / "cut.pt", mobilenet_reference.state_dict())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"cut\.pt: cannot be loaded safely as weights \(the file is truncated or corrupted\)"):
        weights.load_backbone(path)


def test_missing_and_empty_weights_files_are_refused(tmp_path):
    with pytest.raises(WeightsError, match=r"nowhere\.pt: weights file not found"):
        weights.resolve(tmp_path / "nowhere.pt", real_data=True)
    (tmp_path / "empty.pt").touch()
    with pytest.raises(WeightsError, match=r"empty\.pt: weights file is empty \(0 bytes\)"):
        weights.resolve(tmp_path / "empty.pt", real_data=True)


def test_a_weights_file_is_recorded_by_absolute_path_and_hash_with_six_blocks_frozen(tmp_path, mobilenet_reference, monkeypatch):
    path = saved(tmp_path / "mine.pt", mobilenet_reference.state_dict())
    monkeypatch.chdir(tmp_path)
    start = weights.resolve("mine.pt", real_data=False)
    assert start == StartWeights("file", str(path), sha256(path), FROZEN_BLOCKS)
    assert weights.describe(start) == f"the weights in {path} (SHA-256 {sha256(path)}); features[:6] frozen"


def test_a_recorded_file_that_changed_since_is_refused(tmp_path, mobilenet_reference):
    path = saved(tmp_path / "mine.pt", mobilenet_reference.state_dict())
    start = weights.resolve(path, real_data=True)
    assert torch.equal(weights.load_recorded(start)["features.0.0.weight"], mobilenet_reference.features[0][0].weight)
    saved(path, mobilenet_v2().state_dict())
    with pytest.raises(WeightsError, match=r"mine\.pt: changed since the run was created"):
        weights.load_recorded(start)
    path.unlink()
    with pytest.raises(WeightsError, match=r"mine\.pt: the weights this run starts from are no longer there"):
        weights.load_recorded(start)


# --------------------------------------------------------------------------- defaults and ImageNet


def test_synthetic_data_starts_from_random_weights_by_default_even_with_imagenet_cached(cached_imagenet, caplog):
    with caplog.at_level(logging.WARNING):
        start = weights.resolve(None, real_data=False)
    assert start == StartWeights(RANDOM) and weights.load_recorded(start) is None
    assert weights.describe(start) == "random weights; every layer trained"
    assert not caplog.records


def test_real_data_without_cached_imagenet_starts_random_with_one_line_naming_the_download_command(hub, caplog):
    with caplog.at_level(logging.WARNING):
        assert weights.resolve(None, real_data=True) == StartWeights(RANDOM)
    [record] = caplog.records
    message = record.getMessage()
    assert "starting from random weights" in message and "python -m exbl_core weights --download" in message
    assert str(weights.imagenet_file()) in message and "\n" not in message


def test_real_data_starts_from_cached_imagenet_by_default(cached_imagenet):
    start = weights.resolve(None, real_data=True)
    assert start == StartWeights(IMAGENET, str(cached_imagenet), sha256(cached_imagenet), FROZEN_BLOCKS)
    assert weights.describe(start).startswith("ImageNet weights (torchvision MobileNet_V2_Weights.IMAGENET1K_V1, SHA-256 ")


def test_asking_for_imagenet_when_it_is_not_cached_fails_with_the_path_and_the_command(hub):
    with pytest.raises(WeightsError, match=r"not in the local torch hub cache \(.*mobilenet_v2-b0353104\.pth\); run: python -m exbl_core"):
        weights.resolve(IMAGENET, real_data=False)


def test_a_cached_imagenet_file_whose_hash_does_not_match_its_name_is_refused(cached_imagenet, mobilenet_reference):
    saved(cached_imagenet, {k: v + 1 for k, v in mobilenet_reference.state_dict().items()})
    with pytest.raises(WeightsError, match=r"does not match torchvision's file \(\w{8}…\); delete it and run"):
        weights.resolve(IMAGENET, real_data=True)


def test_the_hash_prefix_comes_from_torchvisions_file_name():
    assert weights.imagenet_hash_prefix() == "b0353104"


# --------------------------------------------------------------------------- the weights command


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_weights_command_says_where_the_file_is_expected_when_not_cached(hub, offline, capsys):
    code, out, _ = _cli(capsys, "weights")
    assert code == 0
    assert f"not cached; expected at {hub}/checkpoints/mobilenet_v2-b0353104.pth" in out
    assert "python -m exbl_core weights --download" in out


def test_weights_command_reports_the_cached_file_and_its_hash(cached_imagenet, offline, capsys):
    code, out, _ = _cli(capsys, "weights")
    assert code == 0 and f"cached at {cached_imagenet} (SHA-256 {sha256(cached_imagenet)})" in out


def test_download_offline_fails_in_one_line_with_exit_2_saying_where_to_put_the_file(hub, offline, capsys):
    code, _, err = _cli(capsys, "weights", "--download")
    assert code == 2
    expected = hub / "checkpoints" / "mobilenet_v2-b0353104.pth"
    assert err.count("\n") == 1 and err.startswith(
        "error: could not download https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
    )
    assert f"put it at {expected} by hand" in err
    assert "network access refused by the test" in err
    assert list(expected.parent.iterdir()) == [], "a failed download must leave nothing behind"


class FakeResponse(io.BytesIO):
    """What ``urlopen`` returns, served from memory."""

    def info(self) -> Message:
        headers = Message()
        headers["Content-Length"] = str(len(self.getvalue()))
        return headers


def test_download_saves_the_file_after_checking_its_hash(hub, tmp_path, mobilenet_reference, monkeypatch, capsys):
    payload = saved(tmp_path / "served.pt", mobilenet_reference.state_dict()).read_bytes()
    monkeypatch.setattr(weights, "IMAGENET_URL", f"https://download.invalid/mobilenet_v2-{hashlib.sha256(payload).hexdigest()[:8]}.pth")
    requested = []
    monkeypatch.setattr(torch.hub, "urlopen", lambda req: requested.append(req.full_url) or FakeResponse(payload))
    code, out, err = _cli(capsys, "weights", "--download")
    assert code == 0, err
    assert requested == [weights.IMAGENET_URL]
    assert weights.imagenet_file().read_bytes() == payload
    assert f"SHA-256 {hashlib.sha256(payload).hexdigest()}, checked" in out
    # Cached now: a second call downloads nothing.
    assert _cli(capsys, "weights", "--download")[0] == 0 and len(requested) == 1


def test_a_download_with_the_wrong_checksum_is_refused_and_nothing_is_saved(hub, tmp_path, mobilenet_reference, monkeypatch, capsys):
    payload = saved(tmp_path / "served.pt", mobilenet_reference.state_dict()).read_bytes()
    monkeypatch.setattr(torch.hub, "urlopen", lambda req: FakeResponse(payload))  # not torchvision's file
    code, _, err = _cli(capsys, "weights", "--download")
    last = err.rstrip("\n").rsplit("\n", 1)[-1]  # the progress bar came before it
    assert code == 2 and last.startswith("error: ") and "failed its checksum" in last and "nothing was saved" in last
    assert list(weights.imagenet_file().parent.iterdir()) == []
