"""predict(): preprocessing from the model, any size, batches, sliding windows, the files it writes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import segzoo
from segzoo._viz import palette
from segzoo.engine.predict import check_image_size, sliding_window_logits
from segzoo.errors import DataError, UsageError


class Halves(nn.Module):
    """Class 1 on the left half of its input, class 2 on the right; records its inputs."""

    def __init__(self, config=None) -> None:
        super().__init__()
        self.config = config if config is not None else {"num_classes": 3, "labels": ["bg", "left", "right"]}
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x)
        out = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        half = x.shape[-1] // 2
        out[:, 1, :, :half] = 1
        out[:, 2, :, half:] = 1
        return {"out": out}


class PerPixel(nn.Module):
    """A 1x1 convolution: each pixel's logits depend on that pixel alone, so any tiling agrees."""

    def __init__(self, k=4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 1)
        self.config = {"num_classes": k, "preprocessing": {"resize": None}}

    def forward(self, x):
        return {"out": self.conv(x)}


def image(h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_masks_have_each_images_size_and_the_right_classes(tmp_path):
    Image.fromarray(image(30, 50)).save(tmp_path / "a.png")
    Image.fromarray(image(41, 23, 1)).save(tmp_path / "b.jpg")
    model = Halves({"num_classes": 3, "preprocessing": {"resize": 16}})
    masks = segzoo.predict(model, [tmp_path], batch_size=2)
    assert [m.shape for m in masks] == [(30, 50), (41, 23)]
    assert masks[0].dtype == torch.int64
    assert (masks[0][:, :20] == 1).all() and (masks[0][:, -20:] == 2).all()
    # one batch: 16 x 26 and 28 x 16 (shorter sides resized to 16) padded to 28 x 26
    assert [x.shape for x in model.seen] == [(2, 3, 28, 26)]


def test_inputs_of_every_kind(tmp_path):
    arr = image(20, 28)
    Image.fromarray(arr).save(tmp_path / "x.png")
    tensor = torch.from_numpy(arr).permute(2, 0, 1)
    inputs = [tmp_path / "x.png", str(tmp_path / "x.png"), Image.fromarray(arr), tensor, tensor / 255.0, arr]
    masks = segzoo.predict(PerPixel(), inputs[:1] + inputs[2:])
    for m in masks[1:]:
        assert torch.equal(m, masks[0])
    assert len(segzoo.predict(PerPixel(), tensor[None].expand(3, -1, -1, -1))) == 3  # a batch tensor


def test_preprocessing_comes_from_the_model_config_else_defaults():
    x = image(20, 30)
    model = Halves({"num_classes": 3, "preprocessing": {"resize": 10, "mean": [0.5] * 3, "std": [0.5] * 3}})
    segzoo.predict(model, x)
    expected = (torch.from_numpy(x).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    got = model.seen[0][0]
    assert got.shape == (3, 10, 15)
    small = nn.functional.interpolate(expected[None], size=(10, 15), mode="bilinear", antialias=True)[0]
    assert torch.allclose(got, small, atol=0.02)  # uint8 resize, then normalise
    bare = Halves(config={})
    segzoo.predict(bare, x)
    assert bare.seen[0].shape == (1, 3, 520, 780)  # resize 520
    segzoo.predict(bare, x, size=0)
    assert bare.seen[1].shape == (1, 3, 20, 30)  # 0 keeps the size
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(
        bare.seen[1][0], (expected * 0.5 + 0.5 - mean[:, None, None]) / std[:, None, None], atol=1e-5
    )


def test_sliding_window_equals_whole_image_where_the_tile_covers_it():
    model = segzoo.create("lraspp", backbone="mobilenet_v3_small", num_classes=3).eval()
    x = image(37, 53)
    whole = segzoo.predict(model, x, size=0)[0]
    tiled = segzoo.predict(model, x, size=0, tile=64)[0]
    assert torch.equal(whole, tiled)
    xt = torch.randn(3, 37, 53)
    with torch.no_grad():
        assert torch.equal(sliding_window_logits(model, xt, 64), model(xt[None])["out"][0])


def test_sliding_window_averages_overlaps_exactly():
    model = PerPixel().eval()
    x = torch.randn(3, 50, 70)
    with torch.no_grad():
        full = model(x[None])["out"][0]
        for tile, overlap, bs in [(16, 0.25, 1), (20, 0.5, 3), (33, 0.0, 2), (7, 0.9, 8)]:
            assert torch.allclose(sliding_window_logits(model, x, tile, overlap, bs), full, atol=1e-5)
    ones = lambda t: {"out": torch.ones(t.shape[0], 2, *t.shape[-2:])}  # noqa: E731
    assert torch.equal(sliding_window_logits(ones, x, 16, 0.5), torch.ones(2, 50, 70))  # full coverage
    with pytest.raises(ValueError, match=r"0 <= overlap < 1"):
        sliding_window_logits(model, x, 16, 1.0)
    arr = image(60, 90)
    assert torch.equal(segzoo.predict(model, arr, tile=24, overlap=0.3)[0], segzoo.predict(model, arr)[0])


def test_out_dir_gets_palette_masks_and_overlays(tmp_path):
    Image.fromarray(image(30, 50)).save(tmp_path / "cat.png")
    model = Halves({"num_classes": 3, "labels": ["bg", "left", "right"], "preprocessing": {"resize": 16}})
    masks = segzoo.predict(model, tmp_path / "cat.png", out_dir=tmp_path / "out")
    saved = Image.open(tmp_path / "out" / "masks" / "cat.png")
    assert saved.mode == "P" and saved.size == (50, 30)
    assert np.array_equal(np.asarray(saved), masks[0].numpy())
    assert np.array_equal(np.array(saved.getpalette()[:768], dtype=np.uint8).reshape(256, 3), palette())
    over = Image.open(tmp_path / "out" / "overlays" / "cat.png")
    assert over.mode == "RGB" and over.height >= 30 and over.width > 50  # the legend is on the right
    blended = (image(30, 50)[5, 3].astype(float) + palette()[1]) / 2  # left half: class 1
    assert np.abs(np.asarray(over)[5, 3] - blended).max() <= 1
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == [
        "cat.png",
        "cat.png",
        "masks",
        "overlays",
    ]


def test_bad_inputs_are_clear_errors(tmp_path):
    model = PerPixel()
    with pytest.raises(FileNotFoundError, match=r"image .*nope\.png does not exist"):
        segzoo.predict(model, tmp_path / "nope.png")
    with pytest.raises(DataError, match=r"no images .* in folder"):
        segzoo.predict(model, tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(image(8, 8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(image(8, 8)).save(tmp_path / "b" / "x.jpg")
    with pytest.raises(ValueError, match=r"would both be written as 'x'"):
        segzoo.predict(model, [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(UsageError, match=r"predict\(\) takes image paths"):
        segzoo.predict(model, [torch.zeros(5, 8, 8)])
    (tmp_path / "a" / "y.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"y\.png is empty"):
        segzoo.predict(model, tmp_path / "a")


def test_an_image_too_large_after_the_resize_is_refused_before_any_work(tmp_path):
    Image.fromarray(image(1, 600)).save(tmp_path / "strip.png")
    model = Halves({"num_classes": 3, "preprocessing": {"resize": 520}})
    with pytest.raises(DataError) as err:
        segzoo.predict(model, tmp_path / "strip.png")
    message = str(err.value)
    assert message.startswith(
        f"image {tmp_path / 'strip.png'} is 1 x 600 pixels; resizing its shorter side to 520"
    )
    assert "makes it 520 x 312000 (162.2 Mpx, 1.9 GB as a float32 RGB tensor)" in message
    assert "more than the budget of 33.6 Mpx per image: pass size=236 or less (--size 236)" in message
    assert "size=0 (--size 0) to keep its 1 x 600 pixels" in message and "SEGZOO_MAX_PIXELS" in message
    assert model.seen == []
    # the suggested sizes do work
    check_image_size("strip", 1, 600, 236, 2**25)
    with pytest.raises(DataError):
        check_image_size("strip", 1, 600, 237, 2**25)
    assert segzoo.predict(model, tmp_path / "strip.png", size=0)[0].shape == (1, 600)


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    Image.new("1", (12000, 12000)).save(tmp_path / "huge.png")  # 17 KB, under Pillow's bomb limit
    assert (tmp_path / "huge.png").stat().st_size < 150_000

    def no_decoding(path):
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr("segzoo.data.io.read_image", no_decoding)
    model = Halves({"num_classes": 3, "preprocessing": {"resize": 520}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor does Pillow's DecompressionBombWarning get out
        with pytest.raises(DataError, match=r"huge\.png is 12000 x 12000 pixels \(144\.0 Mpx\), more than the "
                           r"33\.6 Mpx segzoo reads per image: downscale the file, or raise the budget"):  # fmt: skip
            segzoo.predict(model, tmp_path / "huge.png")


def test_the_pixel_budget_comes_from_the_argument_else_the_environment(monkeypatch):
    x = image(40, 40)
    model = Halves({"num_classes": 3, "preprocessing": {"resize": None}})
    with pytest.raises(DataError, match=r"image image_00000 is 40 x 40 pixels .*more than the 0\.0 Mpx"):
        segzoo.predict(model, x, max_pixels=1599)
    assert segzoo.predict(model, x, max_pixels=1600)[0].shape == (40, 40)
    monkeypatch.setenv("SEGZOO_MAX_PIXELS", "1599")
    with pytest.raises(DataError, match="40 x 40 pixels"):
        segzoo.predict(model, x)
    assert segzoo.predict(model, x, max_pixels=1600)[0].shape == (40, 40)  # the argument wins
    monkeypatch.setenv("SEGZOO_MAX_PIXELS", "lots")
    with pytest.raises(UsageError, match="SEGZOO_MAX_PIXELS must be a whole number of pixels, got 'lots'"):
        segzoo.predict(model, x)
    monkeypatch.delenv("SEGZOO_MAX_PIXELS")
    for bad in ({"size": -1}, {"tile": 0}, {"max_pixels": 0}):
        with pytest.raises(UsageError):
            segzoo.predict(model, x, **bad)


def test_evaluate_refuses_an_image_too_large_after_the_resize():
    data = [(torch.zeros(3, 1, 600, dtype=torch.uint8), torch.zeros(1, 600, dtype=torch.int64))]

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return data[i]

        def describe(self, i):
            return f"masks/{i}.png (mask of images/{i}.png)"

    model = Halves({"num_classes": 3, "preprocessing": {"resize": 520}})
    with pytest.raises(
        DataError, match=r"masks/0\.png \(mask of images/0\.png\) is 1 x 600 pixels; resizing"
    ):
        segzoo.evaluate(model, Samples())
    assert model.seen == []
    assert segzoo.evaluate(model, Samples(), size=0).images == 1


@pytest.mark.parametrize("failing", ["overlay", "overlay file"])
def test_a_mask_is_never_left_without_its_overlay(tmp_path, monkeypatch, failing):
    from segzoo.engine import predict as _viz  # write_prediction's own reference to overlay
    from segzoo.engine.predict import Prediction, write_prediction

    pred = Prediction("x", torch.zeros(3, 8, 8, dtype=torch.uint8), torch.ones(8, 8, dtype=torch.int64))
    real_overlay = _viz.overlay

    class Unsaveable:
        def save(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    def broken(*args, **kwargs):
        if failing == "overlay":
            raise RuntimeError("the overlay step failed")
        real_overlay(*args, **kwargs)
        return Unsaveable()

    monkeypatch.setattr(_viz, "overlay", broken)
    with pytest.raises((RuntimeError, OSError)):
        write_prediction(pred, tmp_path / "out", ["a", "b"])
    leftovers = [p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert leftovers == []
    monkeypatch.setattr(_viz, "overlay", real_overlay)
    mask_path, _ = write_prediction(pred, tmp_path / "out", ["a", "b"])
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "masks/x.png",
        "overlays/x.png",
    ]
    assert np.array_equal(np.asarray(Image.open(mask_path)), np.ones((8, 8)))
