"""Image reading edge cases, transforms, caption folders, DreamBooth sets and aspect buckets."""

import json
import logging

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from finetune.data.images import (
    BucketBatchSampler,
    CaptionedImageFolder,
    DreamBoothDataset,
    assign_bucket,
    check_resolution,
    fit_and_crop,
    image_size,
    image_to_tensor,
    item_generator,
    make_buckets,
    open_image,
)
from finetune.errors import UserError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def pixels(img):
    return [img.getpixel((x, y)) for y in range(img.height) for x in range(img.width)]


def gradient(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_folder(root, n=3, size=(24, 16), captions="txt"):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        gradient(*size, seed=i).save(root / f"img{i}.png")
        if captions == "txt":
            (root / f"img{i}.txt").write_text(f"caption {i}\n")
    if captions == "jsonl":
        lines = [json.dumps({"file_name": f"img{i}.png", "text": f"caption {i}"}) for i in range(n)]
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


# ---- open_image edge cases ------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (4, 2), RED)
    img.putpixel((0, 0), BLUE)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    img.save(tmp_path / "rot.png", exif=exif)
    upright = open_image(tmp_path / "rot.png")
    assert upright.size == (2, 4) and image_size(tmp_path / "rot.png") == (2, 4)
    assert upright.getpixel((1, 0)) == BLUE and upright.getpixel((0, 0)) == RED


def test_rgba_and_palette_transparency_go_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    rgba.save(tmp_path / "a.png")
    assert pixels(open_image(tmp_path / "a.png")) == [WHITE, RED, (127, 127, 127)]

    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    assert pixels(open_image(tmp_path / "p.png")) == [WHITE, RED]

    la = Image.new("LA", (1, 1), (0, 0))
    la.save(tmp_path / "la.png")
    assert pixels(open_image(tmp_path / "la.png")) == [WHITE]


@pytest.mark.parametrize("dtype, name", [(np.uint16, "g16.png"), (np.int32, "g32.tif")])  # modes "I;16" and "I"
def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path, dtype, name):
    array = np.array([[0, 257 * 64, 32896, 65535]], dtype=dtype)
    Image.fromarray(array).save(tmp_path / name)
    assert Image.open(tmp_path / name).mode == ("I;16" if dtype == np.uint16 else "I")
    img = open_image(tmp_path / name)
    assert img.mode == "RGB"
    assert [p[0] for p in pixels(img)] == [0, 64, 128, 255]


def test_grayscale_and_cmyk_become_rgb(tmp_path):
    Image.new("L", (1, 1), 77).save(tmp_path / "l.png")
    Image.new("CMYK", (1, 1), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    assert pixels(open_image(tmp_path / "l.png")) == [(77, 77, 77)]
    r, g, b = open_image(tmp_path / "c.jpg").getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not a png at all")
    with pytest.raises(UserError, match="junk.png"):
        open_image(tmp_path / "junk.png")
    with pytest.raises(UserError, match="junk.png"):
        image_size(tmp_path / "junk.png")
    gradient(64, 64).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.png"):
        open_image(tmp_path / "cut.png")
    with pytest.raises(UserError, match="missing.png does not exist"):
        open_image(tmp_path / "missing.png")


# ---- transforms -------------------------------------------------------------------------------


def test_resolution_must_be_a_multiple_of_8(tmp_path):
    check_resolution(512)
    with pytest.raises(UserError, match="multiple of 8; use e.g. 512"):
        check_resolution(510)
    make_folder(tmp_path / "f")
    with pytest.raises(UserError, match="multiple of 8"):
        CaptionedImageFolder(tmp_path / "f", resolution=20)
    with pytest.raises(UserError, match="multiple of 8"):
        DreamBoothDataset(tmp_path / "f", "a photo of sks dog", resolution=12)


def test_shorter_side_resize_and_center_crop_keep_the_middle():
    img = Image.new("RGB", (30, 10), RED)
    img.paste(Image.new("RGB", (10, 10), BLUE), (10, 0))  # blue middle third
    out = fit_and_crop(img, (8, 8), center_crop=True, generator=item_generator(0, 0, 0))
    assert out.size == (8, 8)
    assert all(p == BLUE for p in pixels(out.crop((1, 0, 7, 8))))


def test_tensor_range_and_layout():
    img = Image.new("RGB", (2, 1), (0, 0, 0))
    img.putpixel((1, 0), WHITE)
    tensor = image_to_tensor(img)
    assert tensor.shape == (3, 1, 2) and tensor.dtype == torch.float32
    assert torch.equal(tensor[:, 0, 0], torch.full((3,), -1.0)) and torch.equal(tensor[:, 0, 1], torch.ones(3))


def test_random_crop_and_flip_depend_only_on_seed_epoch_index(tmp_path):
    make_folder(tmp_path / "f", n=2, size=(40, 16))
    ds = CaptionedImageFolder(tmp_path / "f", resolution=16, center_crop=False, random_flip=True, seed=3)
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    first = ds[1]["pixel_values"]
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is never touched
    torch.manual_seed(123)
    assert torch.equal(ds[1]["pixel_values"], first)
    other = CaptionedImageFolder(tmp_path / "f", resolution=16, center_crop=False, random_flip=True, seed=3)
    assert torch.equal(other[1]["pixel_values"], first)  # a fresh (resumed) dataset sees the same item
    views = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        views.add(ds[1]["pixel_values"].numpy().tobytes())
    assert len(views) > 2  # crops/flips change from epoch to epoch


# ---- caption folders --------------------------------------------------------------------------


def test_txt_captions_and_skips_are_logged(tmp_path, caplog):
    root = make_folder(tmp_path / "f", n=3)
    (root / "notes.md").write_text("not an image")
    (root / "orphan.txt").write_text("caption without an image")
    with caplog.at_level(logging.WARNING, logger="finetune.data.images"):
        ds = CaptionedImageFolder(root, resolution=16)
    assert len(ds) == 3 and [ds[i]["caption"] for i in range(3)] == ["caption 0", "caption 1", "caption 2"]
    assert "skipped 1 non-image file(s), e.g. notes.md" in caplog.text
    assert "skipped 1 caption file(s) with no image of the same name, e.g. orphan.txt" in caplog.text
    assert ds[2]["pixel_values"].shape == (3, 16, 16)


def test_metadata_jsonl_folder_matches_datasets_imagefolder(tmp_path, caplog):
    root = make_folder(tmp_path / "f", n=3, captions="jsonl")
    gradient(8, 8).save(root / "unlisted.png")
    (root / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level(logging.WARNING, logger="finetune.data.images"):
        ds = CaptionedImageFolder(root, resolution=16, cache_dir=str(tmp_path / "cache"))
    assert "1 image(s) have no metadata.jsonl line" in caplog.text
    assert "skipped 1 non-image file(s), e.g. .DS_Store" in caplog.text
    reference = datasets.load_dataset(
        "imagefolder", data_dir=str(root), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert [ds[i]["caption"] for i in range(len(ds))] == reference["text"]
    expected = image_to_tensor(reference[0]["image"].convert("RGB").resize((24, 16)).crop((4, 0, 20, 16)))
    assert torch.equal(ds[0]["pixel_values"], expected)


def test_metadata_errors_are_user_errors(tmp_path):
    root = make_folder(tmp_path / "f", n=1, captions=None)
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "img0.png", "caption": "x"}) + "\n")
    with pytest.raises(UserError, match="no 'text' field"):
        CaptionedImageFolder(root, resolution=16, cache_dir=str(tmp_path / "cache"))
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "x"}) + "\n")
    with pytest.raises(UserError, match="gone.png does not exist"):
        CaptionedImageFolder(root, resolution=16, cache_dir=str(tmp_path / "cache"))


def test_empty_or_missing_folder_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(UserError, match="has no images"):
        CaptionedImageFolder(tmp_path / "empty", resolution=16)
    with pytest.raises(UserError, match="does not exist"):
        CaptionedImageFolder(tmp_path / "nope", resolution=16)


def test_corrupt_image_in_folder_fails_at_construction(tmp_path):
    root = make_folder(tmp_path / "f", n=2)
    (root / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match="bad.jpg"):
        CaptionedImageFolder(root, resolution=16)


# ---- DreamBooth ------------------------------------------------------------------------------


def test_dreambooth_pairs_instance_and_class_images(tmp_path):
    inst = make_folder(tmp_path / "inst", n=2, captions=None)
    cls = make_folder(tmp_path / "cls", n=5, size=(16, 24), captions=None)
    ds = DreamBoothDataset(inst, "a photo of sks dog", resolution=16, class_dir=cls, class_prompt="a photo of a dog")
    assert len(ds) == 5
    item = ds[3]
    assert item["prompt"] == "a photo of sks dog" and item["class_prompt"] == "a photo of a dog"
    assert ds[2]["pixel_values"].shape == ds[2]["class_pixel_values"].shape == (3, 16, 16)
    assert torch.equal(ds[2]["pixel_values"], ds[0]["pixel_values"])  # index 2 cycles to instance image 0
    assert not torch.equal(ds[2]["class_pixel_values"], ds[0]["class_pixel_values"])  # but class image 2 is its own


def test_dreambooth_without_prior_preservation(tmp_path):
    ds = DreamBoothDataset(make_folder(tmp_path / "inst", n=2, captions=None), "a photo of sks dog", resolution=8)
    assert len(ds) == 2 and "class_pixel_values" not in ds[0]
    assert ds[1]["pixel_values"].shape == (3, 8, 8)


def test_dreambooth_user_errors(tmp_path):
    inst = make_folder(tmp_path / "inst", n=1, captions=None)
    with pytest.raises(UserError, match="class_prompt is empty"):
        DreamBoothDataset(inst, "a photo of sks dog", resolution=8, class_dir=inst)
    with pytest.raises(UserError, match="instance_prompt is empty"):
        DreamBoothDataset(inst, " ", resolution=8)
    (tmp_path / "no_class").mkdir()
    with pytest.raises(UserError, match="class image folder .* has no images"):
        DreamBoothDataset(
            inst, "a photo of sks dog", resolution=8, class_dir=tmp_path / "no_class", class_prompt="a dog"
        )


# ---- aspect-ratio buckets ---------------------------------------------------------------------


def test_buckets_are_grid_aligned_and_near_the_target_area():
    buckets = make_buckets(512, 64)
    assert (512, 512) in buckets and (384, 640) in buckets and (640, 384) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert 0.8 * 512 * 512 <= w * h <= 512 * 512 and max(w / h, h / w) <= 2.0
    assert make_buckets(16, 8) == [(16, 16)]
    assert buckets == [(384, 640), (448, 576), (512, 512), (576, 448), (640, 384)]
    assert buckets[assign_bucket((1000, 500), buckets)] == (640, 384)  # 2:1 goes to the widest bucket
    assert buckets[assign_bucket((300, 300), buckets)] == (512, 512)
    tall = buckets[assign_bucket((480, 800), buckets)]
    assert tall == (384, 640)


def test_bucket_sampler_batches_one_bucket_each_and_is_deterministic():
    bucket_ids = [0, 1, 0, 2, 1, 0, 0, 1, 2, 0]
    sampler = BucketBatchSampler(bucket_ids, batch_size=2, seed=7)
    epoch0 = list(sampler)
    assert sorted(i for batch in epoch0 for i in batch) == list(range(10))
    assert all(len({bucket_ids[i] for i in batch}) == 1 for batch in epoch0)
    assert len(sampler) == len(epoch0) == 6  # buckets of 5, 3, 2 -> 3 + 2 + 1 batches
    assert list(BucketBatchSampler(bucket_ids, batch_size=2, seed=7)) == epoch0
    orders = set()
    for epoch in range(5):
        sampler.set_epoch(epoch)
        orders.add(str(list(sampler)))
    assert len(orders) > 1
    dropping = BucketBatchSampler(bucket_ids, batch_size=2, seed=7, drop_last=True)
    assert len(dropping) == 4 and all(len(b) == 2 for b in dropping)


def test_bucketed_folder_yields_bucket_sized_batches(tmp_path):
    root = tmp_path / "f"
    make_folder(root, n=2, size=(48, 24))  # landscape 2:1
    gradient(16, 16, seed=9).save(root / "square.png")
    ds = CaptionedImageFolder(root, resolution=32, bucket_multiple=8)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=BucketBatchSampler(ds.bucket_ids, 2, seed=0),
        collate_fn=lambda items: torch.stack([e["pixel_values"] for e in items]),
    )
    shapes = sorted(tuple(b.shape) for b in loader)
    wide = ds.buckets[ds.bucket_ids[0]]
    assert wide[0] > wide[1] and wide[0] % 8 == 0 and wide[1] % 8 == 0
    assert shapes == sorted([(2, 3, wide[1], wide[0]), (1, 3, 32, 32)])
