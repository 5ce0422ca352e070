"""The grain input pipeline: same-position crops, determinism, resumable order, colour, policies."""
import jax
import numpy as np
import pytest

from ifes_jax.data import pipeline


def _record(ir, vis, bits=16, vis_mode="gray"):
    return {"name": "r", "ir": ir, "vis": vis, "ir_mode": "gray", "vis_mode": vis_mode,
            "ir_bit_depth": bits, "vis_bit_depth": bits}


def _coordinate_source(height=40, width=50):
    coords = (np.arange(height * width).reshape(height, width) + 1).astype(np.uint16)
    return pipeline.RecordSource([_record(coords, coords + 1)]), width


def test_crops_of_both_sources_come_from_the_same_position():
    source, width = _coordinate_source()
    ds = pipeline.training_dataset(source, seed=0, batch_size=4, crop=8)
    for k in range(10):
        batch = ds[k]
        ir = np.rint(batch["ir"][..., 0] * 65535)
        vis = np.rint(batch["vis"][..., 0] * 65535)
        np.testing.assert_array_equal(vis, ir + 1)
        for crop in ir:  # a block of the image, possibly flipped or rotated
            steps = {float(np.abs(np.diff(crop, axis=0))[0, 0]), float(np.abs(np.diff(crop, axis=1))[0, 0])}
            assert steps == {1.0, float(width)}
            assert len(np.unique(np.abs(np.diff(crop, axis=0)))) == 1


def test_same_seed_same_batches_and_another_seed_others():
    source = pipeline.synthetic_source(0, 4, 48)
    a = pipeline.training_dataset(source, seed=1, batch_size=2, crop=16)
    b = pipeline.training_dataset(source, seed=1, batch_size=2, crop=16)
    c = pipeline.training_dataset(source, seed=2, batch_size=2, crop=16)
    for k in range(5):
        np.testing.assert_array_equal(a[k]["ir"], b[k]["ir"])
    assert not all(np.array_equal(a[k]["ir"], c[k]["ir"]) for k in range(5))


def test_every_epoch_is_a_new_permutation_of_the_pairs():
    n = 6
    source = pipeline.RecordSource([_record(np.full((8, 8), i * 1000, np.uint16),
                                            np.full((8, 8), i * 1000, np.uint16)) for i in range(n)])
    ds = pipeline.training_dataset(source, seed=0, batch_size=1, crop=4)
    order = [int(round(ds[k]["ir"][0, 0, 0, 0] * 65535 / 1000)) for k in range(3 * n)]
    epochs = [order[i * n:(i + 1) * n] for i in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3


@pytest.mark.parametrize("device", [None, "device"])
def test_restoring_the_iterator_state_resumes_the_exact_next_batch(device):
    device = jax.devices()[0] if device else None
    ds = pipeline.training_dataset(pipeline.synthetic_source(0, 4, 48), seed=0, batch_size=2, crop=16)
    it = pipeline.iterator(ds, device=device)
    for _ in range(7):
        next(it)
    state = it.get_state()
    expected = np.asarray(next(it)["ir"])
    resumed = pipeline.iterator(ds, state=state, device=device)
    np.testing.assert_array_equal(np.asarray(next(resumed)["ir"]), expected)
    np.testing.assert_array_equal(expected, ds[7]["ir"])
    it.close()
    resumed.close()


def test_colour_visible_images_become_bt601_luma():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    source = pipeline.RecordSource([_record(ir, rgb, bits=8, vis_mode="rgb")])
    batch = pipeline.training_dataset(source, seed=0, batch_size=1, crop=16, flips=False,
                                      rotations=False)[0]
    r, g, b = (rgb[..., i].astype(np.float64) / 255 for i in range(3))
    np.testing.assert_allclose(batch["vis"][0, ..., 0], 0.299 * r + 0.587 * g + 0.114 * b, atol=1e-6)
    np.testing.assert_allclose(batch["ir"][0, ..., 0], ir / 255.0, atol=1e-7)


def test_sixteen_bit_pixels_are_scaled_by_65535():
    full = np.full((8, 8), 65535, np.uint16)
    batch = pipeline.training_dataset(pipeline.RecordSource([_record(full, full // 2)]), seed=0,
                                      batch_size=1, crop=8)[0]
    np.testing.assert_array_equal(batch["ir"], 1.0)
    np.testing.assert_allclose(batch["vis"], 32767 / 65535, rtol=1e-7)


def test_small_images_are_padded_by_reflection_or_skipped():
    small = np.arange(30, dtype=np.uint16).reshape(5, 6) * 1000
    big = np.full((12, 12), 7, np.uint16)
    source = pipeline.RecordSource([_record(small, small)])
    batch = pipeline.training_dataset(source, seed=0, batch_size=1, crop=8, flips=False,
                                      rotations=False)[0]
    expected = np.pad(small / 65535.0, ((0, 3), (0, 2)), mode="reflect")
    np.testing.assert_allclose(batch["ir"][0, ..., 0], expected, rtol=1e-6)
    mixed = pipeline.RecordSource([_record(small, small), _record(big, big)])
    skipping = pipeline.training_dataset(mixed, seed=0, batch_size=1, crop=8, small_images="skip")
    for k in range(6):
        np.testing.assert_allclose(skipping[k]["ir"], 7 / 65535, rtol=1e-6)
    with pytest.raises(ValueError, match="no pair is at least"):
        pipeline.training_dataset(pipeline.RecordSource([_record(small, small)]), seed=0,
                                  batch_size=1, crop=8, small_images="skip")


def test_process_shards_together_make_the_global_batch():
    source = pipeline.synthetic_source(0, 5, 40)
    whole = pipeline.training_dataset(source, seed=3, batch_size=6, crop=16)
    shards = [pipeline.training_dataset(source, seed=3, batch_size=2, crop=16, shard_index=i,
                                        shard_count=3) for i in range(3)]
    for k in range(4):
        np.testing.assert_array_equal(np.concatenate([s[k]["ir"] for s in shards]), whole[k]["ir"])
