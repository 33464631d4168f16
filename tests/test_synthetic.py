"""The synthetic dataset: deterministic, varied, split as documented, written atomically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segzoo.data import SYNTHETIC_CLASSES, SyntheticSegmentation, collate, train_transforms, write_synthetic
from segzoo.data.synthetic import render


def test_a_sample_depends_on_seed_and_index_only():
    a = SyntheticSegmentation(50, seed=7)
    b = SyntheticSegmentation(10, seed=7, split="val")  # indices 8, 9 of the same seed
    assert torch.equal(a[8][0], b[0][0]) and torch.equal(a[9][1], b[1][1])
    assert torch.equal(a[3][0], SyntheticSegmentation(50, seed=7)[3][0])  # again, in another object
    assert not torch.equal(a[3][1], SyntheticSegmentation(50, seed=8)[3][1])
    img, mask = render(7, 8)
    assert np.array_equal(img, a[8][0].permute(1, 2, 0).numpy()) and np.array_equal(mask, a[8][1].numpy())
    # pinned: the generator must not drift between versions or machines (the mask exactly; the
    # image to within rounding, as numpy's exp may differ in the last bit between CPUs)
    assert mask.shape == (154, 142) and int(mask.sum()) == 213297 and int((mask == 255).sum()) == 768
    assert float(img.mean()) == pytest.approx(112.513, abs=0.01)


def test_split_scheme_last_fifth_is_val():
    train = SyntheticSegmentation(20, seed=0, split="train")
    val = SyntheticSegmentation(20, seed=0, split="val")
    assert list(train.indices) == list(range(16)) and list(val.indices) == [16, 17, 18, 19]
    assert len(SyntheticSegmentation(20, seed=0)) == 20
    assert list(SyntheticSegmentation(10, split="val", val_fraction=0.5).indices) == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match=r"unknown split 'test'"):
        SyntheticSegmentation(20, split="test")
    with pytest.raises(ValueError, match=r"split of 2 synthetic samples is empty"):
        SyntheticSegmentation(2, split="val", val_fraction=0.1)


def test_varied_sizes_every_class_textures_and_noise():
    data = SyntheticSegmentation(40, seed=0)
    sizes, counts = set(), torch.zeros(6, dtype=torch.long)
    void = 0
    for image, mask in data:
        sizes.add(tuple(image.shape[-2:]))
        labelled = mask[mask != 255]
        counts += torch.bincount(labelled, minlength=6)
        void += mask.numel() - labelled.numel()
        assert image.dtype == torch.uint8 and labelled.max() < 6
    assert len(sizes) > 30 and all(96 <= s <= 160 for hw in sizes for s in hw)
    assert (counts > 0).all() and counts[0] < counts.sum() * 0.8  # objects cover a real share
    assert 0 < void < 0.1 * counts.sum()  # VOC-like unlabelled outlines, a few percent
    image, mask = data[0]
    for c in set(mask.unique().tolist()) - {0, 255}:  # textured objects: inside each, pixels vary a lot
        assert image[:, mask == c].float().std() > 20
    _, plain = render(0, 0, void=0)
    assert 255 not in plain
    assert data.classes == list(SYNTHETIC_CLASSES)
    assert SyntheticSegmentation(5, num_classes=3).classes == ["background", "circle", "square"]
    assert max(int(m[m != 255].max()) for _, m in SyntheticSegmentation(20, num_classes=3)) == 2
    with pytest.raises(ValueError, match=r"num_classes must be 2\.\.6"):
        SyntheticSegmentation(5, num_classes=7)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'colour'"):
        SyntheticSegmentation(5, colour=1)


def test_feeds_the_training_preset_and_collate():
    data = SyntheticSegmentation(8, seed=0, transforms=train_transforms(64, 48))
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collate)
    torch.manual_seed(0)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 48, 48) and y.shape == (4, 48, 48) and y.dtype == torch.int64


def test_writer_never_leaves_a_partial_folder(tmp_path):
    calls = []

    def failing(it):
        for i in it:
            calls.append(i)
            if i == 3:
                raise KeyboardInterrupt
            yield i

    with pytest.raises(KeyboardInterrupt):
        write_synthetic(tmp_path / "out", 10, progress=failing)
    assert calls == [0, 1, 2, 3] and list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    write_synthetic(tmp_path / "empty", 5)  # an empty folder is fine
    assert len(list((tmp_path / "empty" / "images").iterdir())) == 5
    with pytest.raises(FileExistsError, match=r"already exists and is not empty"):
        write_synthetic(tmp_path / "empty", 5)


def test_the_written_folder_has_the_users_normal_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        out = write_synthetic(tmp_path / "s", 4)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0700
    assert stat.S_IMODE((out / "classes.txt").stat().st_mode) == 0o644
