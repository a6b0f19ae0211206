"""The ``vla-gym`` command line."""

from __future__ import annotations

import cv2
import pytest

from vla_gym.cli import main


def test_render_writes_rgb_and_depth_side_by_side(tmp_path, capsys):
    out = tmp_path / "obs.png"
    assert main(["render", "--env", "VLAPick-v0", "--seed", "0", "--out", str(out), "--scale", "2"]) == 0
    image = cv2.imread(str(out))
    assert image.shape == (84 * 2, 84 * 2 * 2, 3)
    assert "VLAPick-v0" in capsys.readouterr().out


def test_render_bad_target_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["render", "--seed", "0", "--target", "magenta", "--out", str(tmp_path / "x.png")])
    assert exc.value.code == 2
    assert "colours present" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
