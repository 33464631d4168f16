"""Dataset readers on every layout, image modes, bad data, transforms, collate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from segzoo._viz import save_mask
from segzoo.data import (
    VOC_CLASSES,
    DataError,
    FolderSegmentation,
    VOCSegmentation,
    collate,
    detect_format,
    eval_transforms,
    open_dataset,
    read_image,
    read_mask,
    train_transforms,
)

from .datagen import random_sample, write_folder, write_voc

# -- layouts ------------------------------------------------------------------------------------


def test_voc_layout_reads_splits_images_and_palette_masks(tmp_path):
    voc = write_voc(tmp_path, n=4)
    for root in (voc, tmp_path / "VOCdevkit", tmp_path):  # VOC2012 itself or a folder above it
        ds = VOCSegmentation(root, "val")
        assert len(ds) == 2 and ds.classes == list(VOC_CLASSES) and ds.num_classes == 21
    image, mask = ds[1]
    assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
    assert image.dtype == torch.uint8 and image.shape == (3, 54, 64)
    assert mask.dtype == torch.int64 and mask.shape == (54, 64)
    expected = np.array(Image.open(voc / "SegmentationClass" / "2007_000003.png"))
    assert torch.equal(mask, torch.from_numpy(expected).long())
    assert 255 in mask.unique().tolist()  # the ignore index survives
    assert detect_format(tmp_path / "VOCdevkit") == "voc"
    assert len(open_dataset(voc, split="train")) == 2
    with pytest.raises(ValueError, match=r"read by split"):
        open_dataset(voc, split=None)


@pytest.mark.parametrize("classes_file", ["txt", "json"])
def test_folder_layout_with_and_without_splits(tmp_path, classes_file):
    root = write_folder(
        tmp_path / "d", n=5, splits={"train": [0, 1, 2], "val": [3, 4]}, classes_file=classes_file
    )
    everything = FolderSegmentation(root)
    assert len(everything) == 5 and everything.classes == ["c0", "c1", "c2", "c3"]
    val = FolderSegmentation(root, "val")
    assert [p[0].name for p in val.samples] == ["s03.png", "s04.png"]
    image, mask = val[0]
    assert image.shape == (3, 52, 50) and mask.shape == (52, 50)
    expected = np.array(Image.open(root / "masks" / "s03.png"))
    assert torch.equal(mask, torch.from_numpy(expected).long())
    assert torch.equal(
        image, torch.from_numpy(np.array(Image.open(root / "images" / "s03.png"))).permute(2, 0, 1)
    )
    assert detect_format(root) == "folder"
    assert len(open_dataset(root, split=None)) == 5


def test_folder_layout_index_masks_and_class_count_without_names(tmp_path):
    root = write_folder(tmp_path / "d", n=2, classes_file="none")
    Image.fromarray(np.full((40, 56), 3, dtype=np.uint8), mode="L").save(root / "masks" / "s00.png")
    with pytest.raises(DataError, match=r"no classes\.txt or classes\.json"):
        FolderSegmentation(root)
    ds = FolderSegmentation(root, num_classes=4)
    assert ds.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert ds[0][1].unique().tolist() == [3]


# -- image and mask modes -----------------------------------------------------------------------


def test_image_modes_load_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    cases = {
        "gray.png": (Image.fromarray(gray, mode="L"), np.repeat(gray[..., None], 3, 2)),
        "gray_alpha.png": (
            Image.fromarray(np.dstack([gray, gray]), mode="LA"),
            np.repeat(gray[..., None], 3, 2),
        ),
        "rgba.png": (Image.fromarray(np.dstack([rgb, np.full_like(gray, 7)]), mode="RGBA"), rgb),
        "gray16.png": (Image.fromarray(gray.astype(np.uint16) * 257), np.repeat(gray[..., None], 3, 2)),
    }
    pal = Image.fromarray(rng.integers(0, 4, (12, 20), dtype=np.uint8), mode="P")
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], dtype=np.uint8)
    pal.putpalette(colours.tobytes())
    cases["palette.png"] = (pal, colours[np.asarray(pal)])
    for name, (img, expected) in cases.items():
        img.save(tmp_path / name)
        got = read_image(tmp_path / name)
        assert got.shape == (3, 12, 20) and got.dtype == torch.uint8, name
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected, err_msg=name)


def test_exif_rotated_image_is_turned_upright(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (10, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "phone.png", exif=exif)
    got = read_image(tmp_path / "phone.png").permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, np.rot90(arr, k=-1))


def test_masks_read_as_class_indices(tmp_path):
    values = np.array([[0, 1, 2], [255, 3, 1]], dtype=np.uint8)
    save_mask(values, tmp_path / "p.png")
    Image.fromarray(values, mode="L").save(tmp_path / "l.png")
    Image.fromarray(values.astype(np.uint16) * 100).save(tmp_path / "i16.png")
    assert read_mask(tmp_path / "p.png").tolist() == values.tolist()
    assert read_mask(tmp_path / "l.png").tolist() == values.tolist()
    assert read_mask(tmp_path / "i16.png").tolist() == (values.astype(np.int64) * 100).tolist()
    assert read_mask(tmp_path / "p.png").dtype == torch.int64


# -- bad data: one clear error naming the file ----------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "d", n=3, splits={"val": [0, 1, 2]})


def test_zero_byte_image(folder):
    (folder / "images" / "s01.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"s01\.png is empty \(0 bytes\)"):
        FolderSegmentation(folder)[1]


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_unreadable_image(folder, content):
    path = folder / "images" / "s02.png"
    data = path.read_bytes()[:200] if content == "truncated" else content
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"cannot read image .*s02\.png"):
        FolderSegmentation(folder)[2]
    FolderSegmentation(folder)[0]  # the other samples still load


def test_mask_of_another_size(folder):
    save_mask(np.zeros((7, 9), dtype=np.uint8), folder / "masks" / "s00.png")
    with pytest.raises(DataError, match=r"masks/s00\.png .*mask is 9x7 but the image is 56x40"):
        FolderSegmentation(folder)[0]


def test_mask_values_outside_the_classes(folder):
    mask = np.zeros((44, 54), dtype=np.uint8)
    mask[0, :3] = [4, 9, 255]  # 4 classes: 4 and 9 are wrong, 255 is ignore
    save_mask(mask, folder / "masks" / "s01.png")
    with pytest.raises(DataError, match=r"masks/s01\.png .*values \[4, 9\] outside the 4 classes"):
        FolderSegmentation(folder)[1]


def test_rgb_mask_is_refused(folder):
    Image.new("RGB", (56, 40), (128, 0, 0)).save(folder / "masks" / "s00.png")
    with pytest.raises(DataError, match=r"mask .*s00\.png is a RGB colour image.*index .* or palette"):
        FolderSegmentation(folder)[0]


def test_empty_dataset(tmp_path, folder):
    (folder / "splits" / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match=r"empty: it lists no images"):
        FolderSegmentation(folder, "empty")
    root = tmp_path / "nothing"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"nothing is empty"):
        FolderSegmentation(root)


def test_missing_split_file(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match=r"splits/train\.txt does not exist \(splits found: val\)"):
        FolderSegmentation(folder, "train")
    voc = write_voc(tmp_path / "v", n=2)
    (voc / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/val\.txt does not exist"):
        VOCSegmentation(voc, "val")


def test_missing_files_and_wrong_layouts(tmp_path, folder):
    (folder / "masks" / "s02.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/s02\.png has no mask: expected .*masks/s02\.png"):
        FolderSegmentation(folder)
    (folder / "images" / "s02.jpg").write_bytes(b"x")
    with pytest.raises(
        DataError, match=r"s02\.jpg and .*s02\.png have the same name|s02\.png and .*s02\.jpg"
    ):
        FolderSegmentation(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"cannot tell the layout"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        open_dataset(tmp_path / "absent")
    voc = write_voc(tmp_path / "v", n=2)
    (voc / "JPEGImages" / "2007_000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"2007_000001\.jpg, listed as '2007_000001' in split 'val'"):
        VOCSegmentation(voc, "val")
    (folder / "classes.txt").write_text("")
    (folder / "images" / "s02.jpg").unlink()
    with pytest.raises(DataError, match=r"classes\.txt lists no classes"):
        FolderSegmentation(folder, "val")


def test_bad_classes_json(tmp_path):
    root = write_folder(tmp_path / "d", n=1, classes_file="json")
    (root / "classes.json").write_text(json.dumps({"names": 3}))
    with pytest.raises(DataError, match=r"classes\.json must hold a list of class names"):
        FolderSegmentation(root)


# -- transforms and collate ---------------------------------------------------------------------


def sample(h=40, w=60, num_classes=5, seed=0):
    img, mask = random_sample(np.random.default_rng(seed), h, w, num_classes)
    return tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1)), tv_tensors.Mask(
        torch.from_numpy(mask).long()
    )


def test_train_preset_resizes_flips_pads_and_crops():
    image, mask = sample()
    tf = train_transforms(base_size=32, crop_size=48)
    torch.manual_seed(0)
    seen_padding = False
    for _ in range(20):
        x, y = tf(image, mask)
        assert type(x) is torch.Tensor and type(y) is torch.Tensor  # plain tensors out
        assert x.shape == (3, 48, 48) and x.dtype == torch.float32
        assert y.shape == (48, 48) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= set(mask.unique().tolist())  # nearest: no new values
        pad = (y == 255) & (x == x[:, -1:, -1:]).all(0)
        seen_padding |= bool(pad[-1].all())
    assert seen_padding  # a small scale pads the bottom/right, masks with 255


def test_eval_preset_resizes_shorter_side_with_nearest_masks():
    image, mask = sample(40, 60)
    x, y = eval_transforms(20, mean=(0, 0, 0), std=(1, 1, 1))(image, mask)
    assert x.shape == (3, 20, 30) and y.shape == (20, 30)
    expected = torch.nn.functional.interpolate(mask[None, None].float(), size=(20, 30), mode="nearest")
    assert torch.equal(y, expected[0, 0].long())
    assert x.min() >= 0 and x.max() <= 1
    x_only = eval_transforms(None)(image)  # an image alone, original size
    assert x_only.shape == (3, 40, 60)


def test_collate_pads_images_with_0_and_masks_with_255():
    a, b = sample(10, 20), sample(16, 12, seed=1)
    images, masks = collate([a, b])
    assert images.shape == (2, 3, 16, 20) and masks.shape == (2, 16, 20)
    assert torch.equal(images[0, :, :10, :20], a[0]) and (images[0, :, 10:] == 0).all()
    assert torch.equal(masks[1, :16, :12], b[1]) and (masks[1, :, 12:] == 255).all()
    _, masks = collate([a, b], mask_fill=7)
    assert (masks[0, 10:] == 7).all()


def test_dataset_with_transforms_feeds_a_dataloader(tmp_path):
    root = write_folder(tmp_path / "d", n=4)
    ds = FolderSegmentation(root, transforms=eval_transforms(24))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    images, masks = next(iter(loader))
    assert images.shape[:2] == (4, 3) and min(images.shape[-2:]) == 24
    assert masks.shape == (4, *images.shape[-2:])
