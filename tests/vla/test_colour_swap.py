"""Counterfactual colour augmentation: channels permuted and colour words renamed together."""

from __future__ import annotations

import pytest
import torch

from vla.training import COLOUR_CHANNELS, colour_swap


def _scene(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A red square at the top left, a green one at the top right, a blue one at the bottom, on grey."""
    img = torch.full((b, 3, 8, 8), 0.5)
    for c, (r, k) in enumerate(((0, 0), (0, 6), (6, 3))):
        img[:, :, r : r + 2, k : k + 2] = 0.1
        img[:, c, r : r + 2, k : k + 2] = 0.9
    sub = img.flip(-1)  # a second image of the sample (the subgoal frame): gets the same permutation
    return img, sub


SPOTS = {"red": (0, 0), "green": (0, 6), "blue": (6, 3)}  # where each cube was, by its original colour


def test_words_follow_the_pixels():
    b = 64
    img, sub = _scene(b)
    tasks = ["stack the red cube on the blue cube"] * (b // 2) + ["put the green cube in the reddish bin"] * (
        b // 2
    )
    (new_img, new_sub), new_tasks = colour_swap([img, sub], tasks, 1.0, torch.Generator().manual_seed(0))
    assert len({t for t in new_tasks[: b // 2]}) > 1  # several permutations drawn
    for i, (old, new) in enumerate(zip(tasks, new_tasks, strict=True)):
        old_words = [w for w in old.replace(",", " ").split() if w in COLOUR_CHANNELS]
        new_words = [w for w in new.split() if w in COLOUR_CHANNELS]
        assert len(new_words) == len(old_words)
        assert ("reddish" in new) == ("reddish" in old)  # not a colour word: left alone
        for ow, nw in zip(old_words, new_words, strict=True):
            r, k = SPOTS[ow]
            pixel = new_img[i, :, r, k]
            assert int(pixel.argmax()) == COLOUR_CHANNELS[nw]  # the object keeps its name's colour
        assert old_words != new_words or old == new
        # every sample's permutation is a real one, the same for both images
        perm = [int(new_img[i, :, SPOTS[c][0], SPOTS[c][1]].argmax()) for c in ("red", "green", "blue")]
        assert sorted(perm) == [0, 1, 2]
        assert perm != [0, 1, 2]
        torch.testing.assert_close(new_sub[i], new_img[i].flip(-1))


def test_share_zero_and_partial_and_bad_input():
    img, sub = _scene(400)
    tasks = ["put the red cube on the plate"] * 400
    same_imgs, same_tasks = colour_swap([img, sub], tasks, 0.0)
    assert same_imgs[0] is img
    assert same_tasks == tasks
    (new_img, _), new_tasks = colour_swap([img, sub], tasks, 0.3, torch.Generator().manual_seed(1))
    changed = [t != "put the red cube on the plate" for t in new_tasks]
    moved = (new_img != img).flatten(1).any(1)
    # red stays "red" only under the G<->B swap: 1 of the 5 permutations
    assert 70 <= sum(changed) <= 130  # 0.3 * 400 * 4/5 = 96 expected
    for i in range(400):
        if not changed[i]:
            assert not moved[i] or int(new_img[i, :, 0, 0].argmax()) == 0
        else:
            assert moved[i]
    with pytest.raises(ValueError, match="share must be in"):
        colour_swap([img], tasks, 1.5)
    with pytest.raises(ValueError, match="needs shape"):
        colour_swap([img[:, :1]], tasks, 0.5)


def test_colour_variants_and_the_offline_text_cache():
    import importlib.util
    from pathlib import Path

    from vla.training import colour_variants, rename_colours

    stack = colour_variants("stack the blue cube on the green cube")
    assert stack[0] == "stack the blue cube on the green cube"
    assert len(stack) == 6  # every ordered pair of two different colours
    assert len(colour_variants("put the red cube on the plate")) == 3
    assert colour_variants("open the drawer") == ["open the drawer"]
    assert rename_colours("put the red cube on the plate", (1, 0, 2)) == "put the green cube on the plate"
    # the device's cache holds whatever a --colour_swap run can ask for
    path = Path(__file__).resolve().parents[2] / "scripts/device/make_text_cache.py"
    spec = importlib.util.spec_from_file_location("make_text_cache", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    texts = mod.instructions(["embedded_goal"])
    plain = mod.instructions(["embedded_goal"], colour_variants=False)
    assert set(plain) < set(texts)
    g = torch.Generator().manual_seed(0)
    img = torch.rand(len(plain), 3, 4, 4)
    for _ in range(5):
        _, swapped = colour_swap([img], plain, 1.0, g)
        assert set(swapped) <= set(texts)
